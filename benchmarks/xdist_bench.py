"""`pytest -n 2` against `pytest -n 0` on the example project's pre-merge check, side by side.

Each run is the example's gate (scripts/premerge.sh without its set-up steps): the whole
``example_project`` suite (markers and fine-tuning tests) against ``checkpoints/{base,tuned}``, with a
fresh, empty cache folder (a cold run, as a first CI run) unless ``--warm``. The two variants are
interleaved (each round rotates their order) so that a change in the machine's load hits
both alike; the ratio printed is the median of the per-round ratios ``t(-n 2) / t(-n 0)``. A third
variant, ``-n 2 --dist load``, is pytest-xdist's own scheduling (the evaluations still shared
through the cache), to show what keeping a task's checks on one worker saves. Besides wall time it
reports CPU time (user + system of the whole process tree): on a machine shared with other jobs the
wall time follows the CPU share the scheduler of the operating system grants, and the CPU time says
how much work each variant did.

It also prints, per variant, the reuse kinds the JSON report recorded (``base_reuse`` /
``tuned_reuse``: computed, memory or cache) and checks that the two tables are the same.

The *floor* is the same comparison for a suite of four empty tests under the example's conftest,
without the gate: what pytest-xdist itself costs (a controller plus workers that each start pytest
and its plugins) on this machine at this load. A ratio near the floor means the plugin adds nothing
of its own under xdist.

    python benchmarks/xdist_bench.py              # 1 round, cold
    python benchmarks/xdist_bench.py --pairs 3    # 3 rounds
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
import resource
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


#: label -> the xdist arguments of a variant; "-n 2 --dist load" is xdist's own scheduling (with the cache)
VARIANTS = {"-n 0": ["-n0"], "-n 2": ["-n2"], "-n 2 --dist load": ["-n2", "--dist=load"]}


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the whole process tree: user + system, workers included, the run)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def run(xdist: list[str], cache: Path, out: Path, tests: list[str]) -> tuple[float, float, dict, str, int]:
    """(wall s, CPU s, JSON report, the summary table, exit status) of one run of the gate."""
    json_path = out / "report.json"
    json_path.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "-p", "xdist", *xdist,
        f"--base-ckpt={CKPT / 'base.safetensors'}", f"--tuned-ckpt={CKPT / 'tuned.safetensors'}",
        f"--forgetting-cache-dir={cache}", f"--forgetting-json={json_path}", f"--forgetting-markdown={out / 'report.md'}",
    ]  # fmt: skip
    wall, cpu, proc = _timed(cmd, EXAMPLE)
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    return wall, cpu, report, _table(proc.stdout), proc.returncode


def run_floor(xdist: list[str], folder: Path) -> tuple[float, float]:
    """(wall s, CPU s) of four empty tests with the example's conftest (no checkpoints: the gate is off)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist", *xdist, "test_empty.py"]
    wall, cpu, _ = _timed(cmd, folder)
    return wall, cpu


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
    labels = list(VARIANTS)
    wall: dict[str, list[float]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    floor_wall: dict[str, list[float]] = {k: [] for k in labels[:2]}
    floor_cpu: dict[str, list[float]] = {k: [] for k in labels[:2]}
    last: dict[str, tuple[dict, str, int]] = {}
    try:
        warm_cache = work / "warm-cache"
        if args.warm:
            run(VARIANTS["-n 0"], warm_cache, work, args.tests)
        for rnd in range(args.pairs):
            order = labels[rnd % len(labels):] + labels[: rnd % len(labels)]  # rotate: no variant always first
            for label in order:
                cache = warm_cache if args.warm else work / f"cache-{rnd}-{labels.index(label)}"
                w, c, report, table, rc = run(VARIANTS[label], cache, work, args.tests)
                wall[label].append(w)
                cpu[label].append(c)
                last[label] = (report, table, rc)
                print(f"round {rnd + 1}: {label:17s} {w:6.1f} s wall, {c:6.1f} s CPU (exit {rc})", flush=True)
        empty = work / "floor"
        empty.mkdir()
        shutil.copy(EXAMPLE / "conftest.py", empty / "conftest.py")
        (empty / "test_empty.py").write_text("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(4)))
        for rnd in range(args.pairs):
            for label in (labels[:2] if rnd % 2 == 0 else labels[1::-1]):
                w, c = run_floor(VARIANTS[label], empty)
                floor_wall[label].append(w)
                floor_cpu[label].append(c)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(values: dict[str, list[float]], label: str) -> float:
        return statistics.median(b / a for a, b in zip(values["-n 0"], values[label]))

    med = statistics.median
    print()
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; cache: {'warm' if args.warm else 'cold'}; "
          f"tests: {' '.join(args.tests)}; {args.pairs} round(s)")
    print("| variant | wall s | CPU s | wall / -n 0 | CPU / -n 0 | reuse (base) | reuse (tuned) | exit |")
    print("|---|--:|--:|--:|--:|---|---|--:|")
    for label in labels:
        report, _, rc = last[label]
        counts = reuse_counts(report)
        print(f"| {label} | {med(wall[label]):.1f} | {med(cpu[label]):.1f} | {ratio(wall, label):.3f} | {ratio(cpu, label):.3f} "
              f"| {counts['base_reuse']} | {counts['tuned_reuse']} | {rc} |")
    print(f"| floor: 4 empty tests, -n 0 | {med(floor_wall['-n 0']):.1f} | {med(floor_cpu['-n 0']):.1f} | | | | | |")
    print(f"| floor: 4 empty tests, -n 2 | {med(floor_wall['-n 2']):.1f} | {med(floor_cpu['-n 2']):.1f} "
          f"| {ratio(floor_wall, '-n 2'):.3f} | {ratio(floor_cpu, '-n 2'):.3f} | | | |")
    tables = {label: last[label][1] for label in labels}
    same = len(set(tables.values())) == 1 and bool(tables["-n 0"])
    print(f"tables identical: {same}")
    if not same:
        for label in labels:
            print(f"--- {label}\n{tables[label]}")
    r = ratio(wall, "-n 2")
    print(f"ratio t(-n 2) / t(-n 0): {r:.3f} (per round: {', '.join(f'{b / a:.3f}' for a, b in zip(wall['-n 0'], wall['-n 2']))}); "
          f"goal <= 1.0: {'met' if r <= 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
