"""`pytest -n 2` against `pytest -n 0` on the example project's pre-merge check, side by side.

Each run is the example's gate (scripts/premerge.sh without its set-up steps): the whole
``example_project`` suite (markers and fine-tuning tests) against ``checkpoints/{base,tuned}``, with a
fresh, empty cache folder (a cold run, as a first CI run) unless ``--warm``. The two variants are
interleaved (``-n 0``, ``-n 2``, ``-n 2``, ``-n 0``, ...) so that a change in the machine's load hits
both alike; the ratio printed is the median of the per-pair ratios ``t(-n 2) / t(-n 0)``.

It also prints, per variant, the reuse kinds the JSON report recorded (``base_reuse`` /
``tuned_reuse``: computed, memory or cache) and checks that the two tables are the same.

The *floor* is the same comparison for a suite of four empty tests under the example's conftest,
without the gate: what pytest-xdist itself costs (a controller plus workers that each start pytest
and its plugins) on this machine at this load. A ratio near the floor means the plugin adds nothing
of its own under xdist.

    python benchmarks/xdist_bench.py              # 1 pair, cold
    python benchmarks/xdist_bench.py --pairs 3    # 3 pairs
    python benchmarks/xdist_bench.py --warm       # a warm cache (filled by a first, untimed run)
    python benchmarks/xdist_bench.py --tests tests/test_retention.py   # the marker tests only

Needs the example checkpoints (``python example_project/build_checkpoints.py``) and pytest-xdist.
Torch runs with one thread per process (``OMP_NUM_THREADS=1``), so ``-n 2`` on 2 cores uses both.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
CKPT = EXAMPLE / "checkpoints"


def run(workers: int, cache: Path, out: Path, tests: list[str]) -> tuple[float, dict, str, int]:
    """(wall seconds, JSON report, the summary table, exit status) of one run of the gate."""
    json_path = out / f"report-n{workers}.json"
    cmd = [
        sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "-p", "xdist", f"-n{workers}",
        f"--base-ckpt={CKPT / 'base.safetensors'}", f"--tuned-ckpt={CKPT / 'tuned.safetensors'}",
        f"--forgetting-cache-dir={cache}", f"--forgetting-json={json_path}", f"--forgetting-markdown={out / 'report.md'}",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=EXAMPLE, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    return wall, report, _table(proc.stdout), proc.returncode


def run_floor(workers: int, folder: Path) -> float:
    """Wall seconds of four empty tests with the example's conftest (no checkpoints: the gate is off)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist", f"-n{workers}", "test_empty.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    start = time.perf_counter()
    subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start


def _table(stdout: str) -> str:
    """The forgetting summary table of a run's output (timings are not part of it)."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "forgetting" in line and line.startswith("=")), None)
    if start is None:
        return ""
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("=") or line.startswith("forgetting: wrote") or re.match(r"^(FAILED|ERROR) ", line):
            break
        body.append(line)
    return "\n".join(body).strip()


def reuse_counts(report: dict) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for role in ("base_reuse", "tuned_reuse"):
        counts = collections.Counter(str(r.get(role, "?")) for r in report.get("rows", []))
        out[role] = dict(sorted(counts.items()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--warm", action="store_true", help="time runs with a warm cache (filled by an untimed run first)")
    ap.add_argument("--tests", nargs="*", default=["tests"], help="test paths inside example_project (default: tests)")
    args = ap.parse_args()
    if not (CKPT / "base.safetensors").exists():
        print("no example checkpoints: run python example_project/build_checkpoints.py first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="xdist-bench-"))
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    times: dict[int, list[float]] = {0: [], 2: []}
    floor: dict[int, list[float]] = {0: [], 2: []}
    last: dict[int, tuple[dict, str, int]] = {}
    try:
        warm_cache = work / "warm-cache"
        if args.warm:
            run(0, warm_cache, work, args.tests)
        for pair in range(args.pairs):
            order = (0, 2) if pair % 2 == 0 else (2, 0)
            for workers in order:
                cache = warm_cache if args.warm else work / f"cache-{pair}-{workers}"
                wall, report, table, rc = run(workers, cache, work, args.tests)
                times[workers].append(wall)
                last[workers] = (report, table, rc)
                print(f"pair {pair + 1}: -n {workers}: {wall:6.1f} s (exit {rc})", flush=True)
        empty = work / "floor"
        empty.mkdir()
        shutil.copy(EXAMPLE / "conftest.py", empty / "conftest.py")
        (empty / "test_empty.py").write_text("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(4)))
        for pair in range(args.pairs):
            for workers in ((0, 2) if pair % 2 == 0 else (2, 0)):
                floor[workers].append(run_floor(workers, empty))
            print(f"floor pair {pair + 1}: -n 0: {floor[0][-1]:6.1f} s, -n 2: {floor[2][-1]:6.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [b / a for a, b in zip(times[0], times[2])]
    print()
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; cache: {'warm' if args.warm else 'cold'}; tests: {' '.join(args.tests)}")
    print(f"| variant | wall s (median of {args.pairs}) | reuse (base) | reuse (tuned) | exit |")
    print("|---|--:|---|---|--:|")
    for workers in (0, 2):
        report, _, rc = last[workers]
        counts = reuse_counts(report)
        print(f"| -n {workers} | {statistics.median(times[workers]):.1f} | {counts['base_reuse']} | {counts['tuned_reuse']} | {rc} |")
    same = last[0][1] == last[2][1] and bool(last[0][1])
    print(f"tables identical: {same}")
    if not same:
        print("--- -n 0\n" + last[0][1] + "\n--- -n 2\n" + last[2][1])
    ratio = statistics.median(ratios)
    floor_ratio = statistics.median(b / a for a, b in zip(floor[0], floor[2]))
    print(f"floor (4 empty tests, no gate): -n 0 {statistics.median(floor[0]):.1f} s, -n 2 {statistics.median(floor[2]):.1f} s, ratio {floor_ratio:.3f}")
    print(f"ratio t(-n 2) / t(-n 0): {ratio:.3f} (per pair: {', '.join(f'{r:.3f}' for r in ratios)}); goal <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
