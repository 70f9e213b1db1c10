"""Shared by the cache attack suites: a tiny project with two checks and an unrelated test, runs, entries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: two checks of one task and an unrelated test. With ``tuned(trap_weight=10)`` on a project built with
#: ``trap=80`` (80 of 400 examples flip), the first check FAILs (drop 0.20 > 0.05) and the second PASSes
#: (0.20 < 0.35); a base evaluation replaced by the tuned model's outputs would PASS both.
TWO_CHECKS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.05)
    def test_keeps_synth():
        pass

    @pytest.mark.retains(task="synth", max_drop=0.35)
    def test_keeps_synth_loosely():
        pass

    def test_unrelated():
        assert sum([1, 2, 3]) == 6
"""

HONEST = ["fail", "pass"]
OUTCOMES = {"failed": 1, "passed": 2}
CACHE_WARNING = "pytest-forgetting: cache folder"


def setup(make_project: Any) -> tuple[Any, Path]:
    p = make_project(n=400, trap=80)
    p.test_file(TWO_CHECKS)
    return p, p.tuned(trap_weight=10.0)


def args(p: Any, tuned: Path, cache: Path | str | None, *extra: str, base: Path | None = None) -> list[str]:
    out = [f"--base-ckpt={base or p.base}", f"--tuned-ckpt={tuned}", "--model-factory=tinymodels:build",
           "--forgetting-device=cpu", f"--forgetting-json={p.path / 'report.json'}", "-p", "no:cacheprovider"]  # fmt: skip
    if cache is not None:
        out.append(f"--forgetting-cache-dir={cache}")
    return out + list(extra)


def run(p: Any, tuned: Path, cache: Path | str | None, *extra: str, base: Path | None = None) -> tuple[Any, list[dict]]:
    report = p.path / "report.json"
    if report.exists():
        report.unlink()
    result = p.pytester.runpytest(*args(p, tuned, cache, *extra, base=base))
    rows = json.loads(report.read_text())["rows"]
    return result, rows


def verdicts(rows: list[dict]) -> list[str]:
    return [r["verdict"] for r in sorted(rows, key=lambda r: r["test"])]


def base_cached(rows: list[dict]) -> bool:
    """Whether the first check's base came from the disk cache (later checks reuse it in-process)."""
    return next(r for r in rows if r["test"].endswith("::test_keeps_synth"))["base_cached"]


def assert_honest(result: Any, rows: list[dict]) -> None:
    """The run the attack must not change: FAIL, PASS, the unrelated test passes, no crash."""
    result.assert_outcomes(**OUTCOMES)
    assert verdicts(rows) == HONEST
    out = result.stdout.str()
    assert "unexpected" not in out and "KeyError" not in out and "Traceback" not in out


def warning_count(result: Any) -> int:
    """How many times the cache warning is printed (the warnings summary names it once)."""
    return (result.stdout.str() + result.stderr.str()).count(CACHE_WARNING)


def entries(cache: Path) -> list[Path]:
    """The base model's evaluation entries (not tokenised inputs, not the tuned model's ``tuned-*``)."""
    return sorted(f for f in cache.glob("*.npz") if not f.name.startswith(("prepared-", "tuned-")))


def read_entry(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def forged_entry(p: Any, tuned: Path, workdir: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(file name, arrays) of a complete forgery: the tuned model's outputs under the base's key.

    An honest run gives the base entry (its name and recorded key); a run with the tuned checkpoint
    as the base gives the tuned outputs. The forgery records the base's key, so only where the
    entry lives (and who owns it) can tell it apart.
    """
    honest, scratch = workdir / "honest", workdir / "scratch"
    run(p, tuned, honest)
    run(p, tuned, scratch, base=tuned)
    (base_entry,) = entries(honest)
    (tuned_entry,) = entries(scratch)
    forged = read_entry(tuned_entry)
    forged["__key__"] = read_entry(base_entry)["__key__"]
    shutil.rmtree(honest)
    shutil.rmtree(scratch)
    return base_entry.name, forged


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def make_victim(path: Path, text: str = "victim: must never change\n") -> tuple[bytes, int]:
    path.write_text(text)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return snapshot(path)


PEAK_HOOK = """

def pytest_unconfigure(config):
    import resource
    print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_subprocess(
    p: Any, argv: list[str], *, timeout: float, preexec: Any = None, prefix: list[str] | None = None
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The same run in a fresh interpreter (for resource limits and dropped privileges); output through pipes."""
    report = p.path / "report.json"
    if report.exists():
        report.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [*(prefix or []), sys.executable, "-m", "pytest", *argv]
    proc = subprocess.run(
        cmd, cwd=p.path, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec, check=False
    )
    rows = json.loads(report.read_text())["rows"] if report.exists() else []
    return proc, rows
