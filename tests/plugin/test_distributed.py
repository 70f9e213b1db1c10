"""Data-parallel evaluation over torch.distributed (issue 18, point 4), on CPU with gloo.

Two pytest processes started like torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT,
LOCAL_RANK) give the same JSON report as one process; each evaluates half of the examples,
rank 0 alone writes the report and prints the table, and both ranks' tests have its outcomes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover - a torch built without distributed
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from pytest_forgetting import distributed  # noqa: E402

COUNTED = """
import atexit, json, os
from torch import nn
import tinymodels

SEEN = {"examples": 0}


class Counted(nn.Sequential):
    def forward(self, x):
        SEEN["examples"] += int(x.shape[0])
        return super().forward(x)


def build():
    return Counted(*tinymodels.build())


@atexit.register
def _dump():
    with open(os.environ["SEEN_FILE"], "w") as fh:
        json.dump(SEEN, fh)
"""

TESTS = """
import pytest


@pytest.mark.retains("synth", max_drop=0.3)
def test_keeps_accuracy():
    pass


@pytest.mark.retains("synth", max_drop=0.02)
def test_small_margin_fails():
    pass


@pytest.mark.retains("synth", max_drop=0.3, metric="f1_macro")
def test_keeps_macro_f1():
    pass
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pytest(path: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = dict(os.environ, OMP_NUM_THREADS="1", **env)
    for key in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if key not in env:
            full.pop(key, None)
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args], cwd=path,
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _rows(report: Path) -> dict:
    data = json.loads(report.read_text())
    for row in data["rows"]:
        for key in [k for k in row if k.endswith("_eval_s")]:
            del row[key]
    return data


def test_two_gloo_ranks_give_the_json_of_one_process(make_project):
    proj = make_project(n=400, trap=40)
    proj.pytester.makepyfile(countedmodels=COUNTED, test_dist=TESTS)
    tuned = proj.tuned(trap_weight=10.0)  # wrong on the 40 trap examples: a 10-point drop
    args = proj.args(tuned, "--forgetting-no-cache", "--forgetting-device=cpu", "--forgetting-batch-size=32")
    args[args.index("tinymodels:build")] = "countedmodels:build"
    path = proj.path

    single = _pytest(path, [*args, "--forgetting-json=single.json"], {"SEEN_FILE": str(path / "seen-single.json")})
    out_single, _ = single.communicate(timeout=300)
    port = str(_free_port())
    ranks = [
        _pytest(
            path,
            [*args, "--forgetting-json=dist.json"],
            {
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "SEEN_FILE": str(path / f"seen-{r}.json"),
            },
        )  # fmt: skip
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in ranks]
    assert single.returncode == 1, out_single
    assert [p.returncode for p in ranks] == [1, 1], outs  # rank 1 mirrors rank 0's outcomes
    for out in outs:
        assert "1 failed, 2 passed" in out, out
    assert "forgetting summary" in outs[0] and "forgetting summary" not in outs[1]

    one, two = _rows(path / "single.json"), _rows(path / "dist.json")
    assert two == one
    assert [r["verdict"] for r in two["rows"]] == ["pass", "pass", "fail"] or sorted(
        r["verdict"] for r in two["rows"]
    ) == ["fail", "pass", "pass"]

    seen = {k: json.loads((path / f"seen-{k}.json").read_text())["examples"] for k in ("single", "0", "1")}
    assert seen["single"] == 800  # base and tuned on 400 examples (no cache: the base once, memoised)
    assert seen["0"] == seen["1"] == 400  # each rank evaluated half


def test_shards_are_deterministic_balanced_and_by_id():
    ids = np.array([f"ex{i}" for i in range(11)])
    owner = distributed.shards(ids, 2)
    assert sorted(np.bincount(owner).tolist()) == [5, 6]
    perm = np.random.default_rng(0).permutation(11)
    assert distributed.shards(ids[perm], 2).tolist() == owner[perm].tolist()  # follows the ids, not their order
    assert distributed.shards(ids, 1).tolist() == [0] * 11


def test_single_process_is_not_distributed(monkeypatch):
    from pytest_forgetting.options import Settings

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.wanted(Settings())
    assert distributed.setup(Settings()) is None
    assert distributed.rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.wanted(Settings()) and distributed.rank() == 1


def test_errors_travel_between_ranks():
    from pytest_forgetting.errors import CheckpointError, EvaluationError

    rebuilt = distributed._rebuild(distributed._portable(CheckpointError("bad weights")))
    assert isinstance(rebuilt, CheckpointError) and str(rebuilt) == "bad weights"
    other = distributed._rebuild(distributed._portable(ValueError("boom")))
    assert isinstance(other, EvaluationError) and "ValueError: boom" in str(other)
