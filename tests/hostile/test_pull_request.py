"""A simulated pull request against the example CI workflow: the PR's repository changes change nothing.

A git repository is built in a temporary folder in the example project's layout (a tiny model,
tasks in a conftest, a pytest contract with three checks and an unrelated test, ci/gate.sh and
the workflow copied byte for byte from example_project/). A pull request then ships its tuned
checkpoint - and, in its hostile form, a root conftest.py that writes a marker file and forces
every test to pass, a pytest.ini / tox.ini / setup.cfg with ``addopts = -k learns``, a
pyproject.toml naming its own model factory, loosened thresholds in tests/, a modified
tests/conftest.py, build_checkpoints.py and ci/gate.sh, and an adversarial base checkpoint (the
tuned weights, so that every check would pass).

The gate runs exactly as the workflow's gate step runs it: its ``run`` command and ``env`` are
read from example_project/.github/workflows/forgetting.yml and executed with bash in a fake
workspace holding the two checkouts (``base/`` and ``pr/``). The verdicts must be the clean
PR's: the same FAIL, every check run, nothing deselected, and no marker file written. A control
run of plain pytest inside the PR checkout shows that the hostile files are live (the marker is
written, checks are deselected), so the gate, not a dud attack, is what made the difference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example_project"
WORKFLOW = EXAMPLE / ".github" / "workflows" / "forgetting.yml"
GATE = EXAMPLE / "ci" / "gate.sh"

K = 4
N = 400
TRAP = 40  # class-0 examples with the flag set: a tuned model that maps the flag to class 1 loses 10 points

TINY_MODELS = f"""
from torch import nn

K = {K}


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
"""

TASKS = f"""
import numpy as np
import pytest_forgetting as pf

K = {K}


def _data(n, trap):
    labels = np.arange(n) % K
    x = np.zeros((n, 1, 1, K + 1), dtype=np.float32)
    x[np.arange(n), 0, 0, labels] = 1.0
    x[np.flatnonzero(labels == 0)[:trap], 0, 0, K] = 1.0
    return x, labels


@pf.task("synth")
def synth():
    x, y = _data({N}, {TRAP})
    return pf.ImageClassificationTask(x, y, ids=[f"ex{{i}}" for i in range(len(y))])


@pf.task("plain")
def plain():
    x, y = _data({N}, 0)
    return pf.ImageClassificationTask(x, y)
"""

CONTRACT = """
import pytest


@pytest.mark.retains(task="synth", max_drop=0.05)
def test_keeps_synth():
    pass


@pytest.mark.retains(task="synth", metric="f1_macro", max_drop=0.05)
def test_keeps_synth_f1():
    pass


@pytest.mark.retains(task="plain", max_drop=0.05)
def test_learns_plain():
    pass
"""

UNRELATED = """
def test_unrelated():
    assert 1 + 1 == 2
"""

PYPROJECT = """
[tool.pytest.ini_options]
testpaths = ["tests"]
forgetting_model_factory = "tinymodels:build"
"""

# the base branch's build script: the trusted base weights (used when the branch does not commit them)
BUILD = f"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

K = {K}

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="checkpoints")
out = Path(ap.parse_args().out)
out.mkdir(parents=True, exist_ok=True)
w = torch.zeros(K, K + 1)
w[:, :K] = torch.eye(K) * 5.0
save_file({{"1.weight": w, "1.bias": torch.zeros(K)}}, str(out / "base.safetensors"))
"""


def _weights(trap_weight: float) -> dict:
    import torch

    w = torch.zeros(K, K + 1)
    w[:, :K] = torch.eye(K) * 5.0
    w[1, K] = trap_weight  # the flag pushes to class 1: the trap examples flip from right to wrong
    return {"1.weight": w, "1.bias": torch.zeros(K)}


def _save(path: Path, trap_weight: float) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_weights(trap_weight), str(path))


def _hostile_files(marker: Path) -> dict[str, str]:
    """Everything a PR can add or change in the repository besides its checkpoint."""
    m = repr(str(marker))
    write = f"open({m}, 'a').write(__file__ + '\\n')\n"
    sh_write = f"echo \"$0\" >> '{marker}'\n"
    force_pass = write + textwrap.dedent("""
        import pytest


        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            outcome = yield
            outcome.get_result().outcome = "passed"
    """)
    ini_opts = "addopts = -k learns\nforgetting_model_factory = evil:build\n"
    return {
        "conftest.py": force_pass,
        "tests/conftest.py": write + TASKS,
        "pytest.ini": "[pytest]\n" + ini_opts,
        "tox.ini": "[pytest]\n" + ini_opts,
        "setup.cfg": "[tool:pytest]\n" + ini_opts,
        "pyproject.toml": PYPROJECT.replace("tinymodels:build", "evil:build") + 'addopts = "-k learns"\n',
        "evil.py": write + TINY_MODELS,
        "sitecustomize.py": write,
        "tests/test_retention.py": CONTRACT.replace("max_drop=0.05", "max_drop=0.99"),
        # builds an adversarial base: the tuned weights, so that every check would pass
        "build_checkpoints.py": write + BUILD.replace("* 5.0\n", "* 5.0\nw[1, K] = 10.0\n"),
        "ci/gate.sh": sh_write + "exit 0\n",
    }


def _git(cwd: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(cwd),
    )
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _commit(repo: Path, message: str) -> None:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


class Repo:
    """A model repository with a base branch and pull-request branches, in a temporary folder."""

    def __init__(self, root: Path, *, base_committed: bool) -> None:
        self.root = root
        self.repo = root / "repo"
        self.marker = root / "pwned.txt"
        self.repo.mkdir(parents=True)
        _git(self.repo, "init", "-q", "-b", "main")
        _write(
            self.repo,
            {
                "pyproject.toml": PYPROJECT,
                "tinymodels.py": TINY_MODELS,
                "tests/conftest.py": TASKS,
                "tests/test_retention.py": CONTRACT,
                "tests/test_unrelated.py": UNRELATED,
                "build_checkpoints.py": BUILD,
            },
        )
        (self.repo / "ci").mkdir()
        shutil.copy2(GATE, self.repo / "ci" / "gate.sh")
        (self.repo / ".github" / "workflows").mkdir(parents=True)
        shutil.copy2(WORKFLOW, self.repo / ".github" / "workflows" / "forgetting.yml")
        if base_committed:
            _save(self.repo / "checkpoints" / "base.safetensors", trap_weight=0.0)
        _commit(self.repo, "base branch")
        # the clean pull request: a tuned checkpoint that forgets the trap examples
        _git(self.repo, "checkout", "-q", "-b", "pr-clean")
        _save(self.repo / "checkpoints" / "tuned.safetensors", trap_weight=10.0)
        _commit(self.repo, "fine-tune")
        # the hostile pull request: the same checkpoint plus every repository change a PR can make
        _git(self.repo, "checkout", "-q", "-b", "pr-hostile")
        _write(self.repo, _hostile_files(self.marker))
        _save(self.repo / "checkpoints" / "base.safetensors", trap_weight=10.0)  # adversarial base
        _commit(self.repo, "hostile")
        _git(self.repo, "checkout", "-q", "main")

    def workspace(self, pr_branch: str, name: str) -> Path:
        """A runner workspace: base/ at main and pr/ at the PR branch (as the two checkouts)."""
        ws = self.root / name
        ws.mkdir()
        _git(self.root, "clone", "-q", "--branch", "main", str(self.repo), str(ws / "base"))
        _git(self.root, "clone", "-q", "--branch", pr_branch, str(self.repo), str(ws / "pr"))
        return ws


def _workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(WORKFLOW.read_text())


def _gate_step(workflow: dict) -> dict:
    steps = [s for s in workflow["jobs"]["gate"]["steps"] if "ci/gate.sh" in s.get("run", "")]
    assert len(steps) == 1, "the gate job runs ci/gate.sh in exactly one step"
    return steps[0]


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FORGETTING_"))}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        HOME=str(root / "home"),
        XDG_CACHE_HOME=str(root / "home" / ".cache"),
        OMP_NUM_THREADS="1",
        # the outer run's addopts must not reach the gate; the gate must drop them itself
        PYTEST_ADDOPTS="-k learns",
    )
    return env


def run_gate(ws: Path) -> subprocess.CompletedProcess:
    """The workflow's gate step, run as GitHub would run it in workspace ``ws``."""
    step = _gate_step(_workflow())
    env = _env(ws)
    for key, value in step.get("env", {}).items():
        env[key] = str(value).replace("${{ github.workspace }}", str(ws))
    return subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )


def outcome(ws: Path, proc: subprocess.CompletedProcess) -> dict:
    """What the gate decided: exit status, verdict per check, and every test case that ran."""
    out = ws / "gate-out"
    report = json.loads((out / "forgetting-report.json").read_text())
    junit = ET.parse(out / "junit.xml").getroot()
    cases = {}
    for case in junit.iter("testcase"):
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = child.tag
        cases[f"{case.get('classname')}::{case.get('name')}"] = status
    suite = junit if junit.tag == "testsuite" else junit.find("testsuite")
    return {
        "returncode": proc.returncode,
        "verdicts": {(r["test"], r["metric"]): r["verdict"] for r in report["rows"]},
        "summary": {k: report["summary"][k] for k in ("checks", "pass", "fail", "error")},
        "cases": cases,
        "tests": int(suite.get("tests")),
        "skipped": int(suite.get("skipped")),
    }


EXPECTED_VERDICTS = {
    ("tests/test_retention.py::test_keeps_synth", "accuracy"): "fail",
    ("tests/test_retention.py::test_keeps_synth_f1", "f1_macro"): "fail",
    ("tests/test_retention.py::test_learns_plain", "accuracy"): "pass",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    return Repo(tmp_path_factory.mktemp("pull-request"), base_committed=True)


@pytest.fixture(scope="module")
def clean(repo):
    ws = repo.workspace("pr-clean", "ws-clean")
    proc = run_gate(ws)
    return ws, proc


# --------------------------------------------------------------------------- the workflow itself


def test_workflow_runs_only_base_branch_code():
    workflow = _workflow()
    events = workflow.get(True) or workflow.get("on")  # YAML 1.1 reads the key `on` as True
    assert "pull_request" not in events, "on pull_request the PR's own copy of this file would run"
    assert "pull_request_target" in events
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["gate"]
    checkouts = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout")]
    assert [c["with"]["path"] for c in checkouts] == ["base", "pr"]
    base, pr = checkouts
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert pr["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    assert all(c["with"].get("persist-credentials") is False for c in checkouts)
    step = _gate_step(workflow)
    assert step["run"].strip() == 'bash "$GATE_BASE/ci/gate.sh"'  # the base branch's copy
    assert step["env"]["GATE_BASE"].endswith("/base") and step["env"]["GATE_PR"].endswith("/pr")
    runs = "\n".join(s.get("run", "") for s in job["steps"] if s is not step)
    assert "pr/" not in runs and "GATE_PR" not in runs, "no other step touches the PR checkout"
    caches = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/cache")]
    assert [c["uses"] for c in caches] == ["actions/cache/restore@v4"]  # a PR run never saves
    assert caches[0]["with"]["path"] == "~/.cache/pytest-forgetting"
    assert "base/checkpoints/base.safetensors" in caches[0]["with"]["key"]
    assert "secrets." not in WORKFLOW.read_text()


def test_gate_script_options_use_the_equals_form():
    text = GATE.read_text()
    for option in (
        "--config-file=",
        "--rootdir=",
        "--confcutdir=",
        "--override-ini=addopts=",
        "--base-ckpt=",
        "--tuned-ckpt=",
        "--forgetting-cache-dir=",
        "--forgetting-json=",
        "--forgetting-markdown=",
        "--junitxml=",
    ):
        assert option in text
    assert "-p no:cacheprovider" in text
    assert "unset PYTEST_ADDOPTS PYTEST_PLUGINS" in text


# --------------------------------------------------------------------------- the pull requests


def test_clean_pull_request_fails_the_gate(clean):
    ws, proc = clean
    result = outcome(ws, proc)
    assert result["returncode"] == 1, proc.stdout + proc.stderr
    assert result["verdicts"] == EXPECTED_VERDICTS
    assert result["summary"] == {"checks": 3, "pass": 1, "fail": 2, "error": 0}
    assert result["tests"] == 4 and result["skipped"] == 0
    assert result["cases"]["tests.test_unrelated::test_unrelated"] == "passed"


def test_hostile_pull_request_changes_nothing(repo, clean):
    ws_clean, proc_clean = clean
    ws = repo.workspace("pr-hostile", "ws-hostile")
    assert (ws / "pr" / "conftest.py").exists() and (ws / "pr" / "pytest.ini").exists()
    proc = run_gate(ws)
    assert not repo.marker.exists(), repo.marker.read_text()
    assert outcome(ws, proc) == outcome(ws_clean, proc_clean), proc.stdout + proc.stderr
    assert "deselected" not in proc.stdout
    # the base checkpoint came from the base branch, not the PR's adversarial copy
    report = json.loads((ws / "gate-out" / "forgetting-report.json").read_text())
    base_ckpt = ws / "base" / "checkpoints" / "base.safetensors"
    assert Path(report["base_ckpt"]["ref"]).resolve() == base_ckpt.resolve()
    clean_report = json.loads((ws_clean / "gate-out" / "forgetting-report.json").read_text())
    assert report["base_ckpt"]["fingerprint"] == clean_report["base_ckpt"]["fingerprint"]
    # and the PR checkout is as the PR left it: nothing was written into it
    assert _git(ws / "pr", "status", "--porcelain", "--ignored") == ""


def test_hostile_build_script_never_runs(tmp_path):
    """The base branch commits no base checkpoint: the base branch's own build script makes it."""
    repo = Repo(tmp_path, base_committed=False)
    ws = repo.workspace("pr-hostile", "ws")
    proc = run_gate(ws)
    assert not repo.marker.exists(), repo.marker.read_text()
    assert "building the base checkpoint with the base branch's build_checkpoints.py" in proc.stdout
    result = outcome(ws, proc)
    assert result["returncode"] == 1, proc.stdout + proc.stderr
    assert result["verdicts"] == EXPECTED_VERDICTS
    assert result["tests"] == 4 and result["skipped"] == 0


def test_the_hostile_files_are_live_outside_the_gate(repo):
    """Control: plain pytest in the PR checkout runs the PR's conftest and ini file."""
    ws = repo.workspace("pr-hostile", "ws-naive")
    env = _env(ws)
    del env["PYTEST_ADDOPTS"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--base-ckpt={ws / 'pr' / 'checkpoints' / 'base.safetensors'}",
            f"--tuned-ckpt={ws / 'pr' / 'checkpoints' / 'tuned.safetensors'}",
        ],
        cwd=ws / "pr",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert repo.marker.exists()
        assert "3 deselected" in proc.stdout, proc.stdout + proc.stderr
        assert proc.returncode == 0
    finally:
        repo.marker.unlink(missing_ok=True)


@pytest.mark.parametrize("attack", ["file-symlink", "folder-symlink", "missing"])
def test_tuned_checkpoint_that_is_not_a_plain_file_is_refused(repo, attack, tmp_path):
    ws = repo.workspace("pr-clean", f"ws-{attack}")
    ckpts = ws / "pr" / "checkpoints"
    if attack == "file-symlink":
        (ckpts / "tuned.safetensors").unlink()
        (ckpts / "tuned.safetensors").symlink_to(ws / "base" / "checkpoints" / "base.safetensors")
    elif attack == "folder-symlink":
        shutil.move(ckpts, ws / "elsewhere")
        ckpts.symlink_to(ws / "elsewhere")
    else:
        (ckpts / "tuned.safetensors").unlink()
    proc = run_gate(ws)
    assert proc.returncode == 2
    expected = "no checkpoint at" if attack == "missing" else "symlink: refused"
    assert "gate: " in proc.stderr and expected in proc.stderr
    assert not (ws / "gate-out" / "forgetting-report.json").exists()
