"""The unit tier (tests/unit) never imports torch: checked in fresh processes, as ``pytest tests/unit`` runs.

tests/unit/conftest.py fails a run of the tier alone when torch shows up in sys.modules, and writes the heavy
modules it saw to FORGETTING_UNIT_REPORT. Collecting the whole tier imports every unit test module and conftest;
the run covers the fast files (the slow statistics files, pure numpy/scipy, run when the tier runs alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"
FAST = [
    "test_bounded.py",
    "test_metrics_records.py",
    "test_report.py",
    "test_results.py",
    "test_torchfree.py",
    "test_util.py",
]


def _run_unit(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "unit-report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # no outer xdist worker or addopts
    env.update(FORGETTING_UNIT_REPORT=str(report), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-n", "0", "-q"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(report.read_text())


def test_collecting_the_unit_tier_imports_no_torch(tmp_path):
    result, seen = _run_unit(tmp_path, "tests/unit", "--collect-only")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert seen["heavy_modules"] == [], seen
    assert seen["items"] == len([line for line in result.stdout.splitlines() if "::" in line]) > 300, seen


def test_the_fast_unit_files_pass_without_importing_torch(tmp_path):
    assert all((UNIT / name).is_file() for name in FAST)
    result, seen = _run_unit(tmp_path, *(f"tests/unit/{name}" for name in FAST))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert seen["heavy_modules"] == [] and seen["items"] > 50, seen
    assert "torch was imported in the unit tier" not in result.stdout
