"""`pytest -n 2` against `pytest -n 0` on the example project's pre-merge check, side by side.

Each run is the example's gate (scripts/premerge.sh without its set-up steps): the whole
``example_project`` suite (markers and fine-tuning tests) against ``checkpoints/{base,tuned}``. Cold
runs start from a fresh, empty cache folder (a first CI run); warm runs share a cache that an
untimed ``-n 0`` run filled first. The variants are interleaved (each round rotates their order:
A B, B A, ...) so that a change in the machine's load hits both alike; a ratio is the median of the
per-round ratios ``t(-n 2) / t(-n 0)``, its inter-quartile range in brackets. ``--with-load`` adds
``-n 2 --dist load``: pytest-xdist's own scheduling (the evaluations still shared through the
cache), to show what keeping a task's checks on one worker saves.

Besides wall time it reports CPU time (user + system of the whole process tree), and per process
(the ``_xdist_timing`` plugin of this folder): CPU until collection is done (interpreter, pytest,
plugins, conftest, test modules and the tasks built to validate the markers), inside tests (torch's
import, model loading, evaluation, fine-tuning), and the rest (report, exit). On a machine shared
with other jobs the wall time follows the CPU share the operating system grants; Linux's
autogroup scheduler (``/proc/sys/kernel/sched_autogroup_enabled``) shares the CPU between
sessions, not processes, so on a saturated machine two workers get no more CPU than one process
and ``-n 2`` cannot beat ``-n 0`` there: its wall time then follows its total CPU time. The
*critical path* (controller + the busiest worker, CPU s) is what ``-n 2`` would take on two cores
of its own, given that CPU per process; compare it with the CPU of ``-n 0``.

It also prints, per variant, the reuse kinds the JSON report recorded (``base_reuse`` /
``tuned_reuse``: computed, memory or cache) and checks that the tables are the same.

The *floor* is the same comparison for a suite of four empty tests under the example's conftest,
without the gate: what pytest-xdist itself costs (a controller plus workers that each start pytest
and its plugins) on this machine at this load.

    python benchmarks/xdist_bench.py                       # 1 round, cold and warm
    python benchmarks/xdist_bench.py --pairs 4 --write     # 4 rounds; the xdist section of RESULTS.md
    python benchmarks/xdist_bench.py --cache warm          # warm only
    python benchmarks/xdist_bench.py --tests tests/test_retention.py   # the marker tests only

Needs the example checkpoints (``python example_project/build_checkpoints.py``) and pytest-xdist.
Torch runs with one thread per process (``OMP_NUM_THREADS=1``), so ``-n 2`` on 2 cores uses both.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
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
HERE = Path(__file__).resolve().parent
EXAMPLE = ROOT / "example_project"
CKPT = EXAMPLE / "checkpoints"

sys.path.insert(0, str(HERE))
from bucketing import write_section  # noqa: E402  (one RESULTS.md section writer for the benchmarks)

#: label -> the xdist arguments of a variant; "-n 2 --dist load" is xdist's own scheduling (with the cache)
VARIANTS = {"-n 0": ["-n0"], "-n 2": ["-n2"], "-n 2 --dist load": ["-n2", "--dist=load"]}


def _load() -> float:
    return os.getloadavg()[0]


def _timed(cmd: list[str], cwd: Path, timing_log: Path) -> tuple[float, float, subprocess.CompletedProcess, list[dict]]:
    """(wall s, CPU s of the whole process tree (user + system, workers included), the run, per-process CPU)."""
    timing_log.unlink(missing_ok=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        XDIST_TIMING_LOG=str(timing_log),
        PYTHONPATH=os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [json.loads(line) for line in timing_log.read_text().splitlines()] if timing_log.exists() else []
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc, procs


def run(xdist: list[str], cache: Path, out: Path, tests: list[str]) -> dict:
    """One run of the gate: wall, CPU, per-process CPU, JSON report, summary table, exit status, load."""
    json_path = out / "report.json"
    json_path.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", *tests, "-p", "no:cacheprovider", "-q", "-p", "xdist", "-p", "_xdist_timing", *xdist,
        f"--base-ckpt={CKPT / 'base.safetensors'}", f"--tuned-ckpt={CKPT / 'tuned.safetensors'}",
        f"--forgetting-cache-dir={cache}", f"--forgetting-json={json_path}", f"--forgetting-markdown={out / 'report.md'}",
    ]  # fmt: skip
    load = _load()
    wall, cpu, proc, procs = _timed(cmd, EXAMPLE, out / "timing.jsonl")
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    return {
        "wall": wall,
        "cpu": cpu,
        "procs": procs,
        "report": report,
        "table": _table(proc.stdout),
        "rc": proc.returncode,
        "load": load,
    }


def run_floor(xdist: list[str], folder: Path) -> dict:
    """Four empty tests with the example's conftest (no checkpoints: the gate is off)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "xdist",
        "-p",
        "_xdist_timing",
        *xdist,
        "test_empty.py",
    ]
    load = _load()
    wall, cpu, _, procs = _timed(cmd, folder, folder / "timing.jsonl")
    return {"wall": wall, "cpu": cpu, "procs": procs, "load": load}


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


def phases(procs: list[dict]) -> dict[str, dict[str, float]]:
    """Per process: CPU s until collected, inside tests, the rest (configure to collected is in 'start')."""
    out = {}
    for p in procs:
        collected = p.get("collected", p.get("configure", 0.0))
        total = p.get("exit", 0.0)
        out[p["w"]] = {
            "start": collected,
            "tests": p.get("tests", 0.0),
            "rest": max(0.0, total - collected - p.get("tests", 0.0)),
            "total": total,
            "n_tests": p.get("n_tests", 0),
            "torch": bool(p.get("torch")),
        }
    return out


def critical_path(procs: list[dict]) -> float:
    """Controller + busiest worker, CPU s (the single process for -n 0)."""
    ph = phases(procs)
    workers = [v["total"] for k, v in ph.items() if k.startswith("gw")]
    return (
        ph.get("controller", {"total": 0.0})["total"]
        + (max(workers) if workers else 0.0)
        + sum(v["total"] for k, v in ph.items() if k == "main")
    )


def _q(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[0], q[2]


def _fmt(values: list[float], digits: int = 1) -> str:
    m, lo, hi = _q(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if len(values) > 1 else f"{m:.{digits}f}"


def interleave(labels: list[str], rnd: int) -> list[str]:
    """Round r's order: rotated by r, so no variant always runs first (A B, B A, ... for two)."""
    k = rnd % len(labels)
    return labels[k:] + labels[:k]


def measure(labels: list[str], pairs: int, warm: bool, work: Path, tests: list[str]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {k: [] for k in labels}
    warm_cache = work / "warm-cache"
    if warm:
        run(VARIANTS["-n 0"], warm_cache, work, tests)  # fills the cache, untimed
    for rnd in range(pairs):
        for label in interleave(labels, rnd):
            cache = warm_cache if warm else work / f"cache-{rnd}-{labels.index(label)}"
            r = run(VARIANTS[label], cache, work, tests)
            runs[label].append(r)
            print(
                f"{'warm' if warm else 'cold'} round {rnd + 1}: {label:17s} {r['wall']:6.1f} s wall, {r['cpu']:6.1f} s CPU, "
                f"critical path {critical_path(r['procs']):5.1f} s CPU, load {r['load']:.1f} (exit {r['rc']})",
                flush=True,
            )
    return runs


def measure_floor(pairs: int, work: Path) -> dict[str, list[dict]]:
    empty = work / "floor"
    empty.mkdir()
    shutil.copy(EXAMPLE / "conftest.py", empty / "conftest.py")
    (empty / "test_empty.py").write_text("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(4)))
    runs: dict[str, list[dict]] = {"-n 0": [], "-n 2": []}
    for rnd in range(pairs):
        for label in interleave(["-n 0", "-n 2"], rnd):
            runs[label].append(run_floor(VARIANTS[label], empty))
    return runs


def ratios(runs: dict[str, list[dict]], label: str, key: str) -> list[float]:
    return [b[key] / a[key] for a, b in zip(runs["-n 0"], runs[label])]


def report_lines(mode: str, runs: dict[str, list[dict]], floor: dict[str, list[dict]] | None) -> list[str]:
    labels = list(runs)
    lines = [
        f"**{mode} cache** ({len(runs['-n 0'])} rounds; load average at the runs' start: "
        f"{_fmt([r['load'] for rs in runs.values() for r in rs])})",
        "",
        "| variant | wall s | CPU s | critical path CPU s | wall / -n 0 | CPU / -n 0 | reuse (base) | reuse (tuned) | exit |",
        "|---|--:|--:|--:|--:|--:|---|---|--:|",
    ]
    for label in labels:
        rs = runs[label]
        counts = reuse_counts(rs[-1]["report"])
        rw = "1" if label == "-n 0" else _fmt(ratios(runs, label, "wall"), 3)
        rc = "1" if label == "-n 0" else _fmt(ratios(runs, label, "cpu"), 3)
        lines.append(
            f"| {label} | {_fmt([r['wall'] for r in rs])} | {_fmt([r['cpu'] for r in rs])} | "
            f"{_fmt([critical_path(r['procs']) for r in rs])} | {rw} | {rc} | {counts['base_reuse']} | {counts['tuned_reuse']} | "
            f"{sorted({r['rc'] for r in rs})} |"
        )
    if floor:
        for label in ("-n 0", "-n 2"):
            rs = floor[label]
            rw = "1" if label == "-n 0" else _fmt(ratios(floor, label, "wall"), 3)
            rc = "1" if label == "-n 0" else _fmt(ratios(floor, label, "cpu"), 3)
            lines.append(
                f"| floor: 4 empty tests, {label} | {_fmt([r['wall'] for r in rs])} | {_fmt([r['cpu'] for r in rs])} | "
                f"{_fmt([critical_path(r['procs']) for r in rs])} | {rw} | {rc} | | | |"
            )
    lines += [
        "",
        "CPU s per process (median over rounds): start = until collected (interpreter, pytest, plugins, conftest, "
        "test modules, the tasks built to validate markers); tests = inside tests (torch import, model loading, "
        "evaluation, fine-tuning); rest = report and exit.",
        "",
        "| variant | process | start | tests | rest | total | tests run | torch imported |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for label in labels:
        per: dict[str, list[dict]] = collections.defaultdict(list)
        for r in runs[label]:
            for w, v in phases(r["procs"]).items():
                per[w].append(v)
        for w in sorted(per, key=lambda k: (k != "controller", k)):
            vs = per[w]
            med = {k: statistics.median(v[k] for v in vs) for k in ("start", "tests", "rest", "total", "n_tests")}
            lines.append(
                f"| {label} | {w} | {med['start']:.2f} | {med['tests']:.2f} | {med['rest']:.2f} | {med['total']:.2f} | "
                f"{med['n_tests']:.0f} | {'yes' if all(v['torch'] for v in vs) else 'no' if not any(v['torch'] for v in vs) else 'some runs'} |"
            )
    tables = {label: runs[label][-1]["table"] for label in labels}
    same = len(set(tables.values())) == 1 and bool(tables["-n 0"])
    lines += ["", f"Summary tables identical across variants: {'yes' if same else 'NO'}."]
    if not same:
        for label in labels:
            lines += [f"--- {label}", "```", tables[label], "```"]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1, help="rounds (each runs every variant once)")
    ap.add_argument("--cache", choices=("cold", "warm", "both"), default="both")
    ap.add_argument("--with-load", action="store_true", help="also time -n 2 --dist load (xdist's own scheduling)")
    ap.add_argument("--tests", nargs="*", default=["tests"], help="test paths inside example_project (default: tests)")
    ap.add_argument("--write", action="store_true", help="replace the xdist section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    if not (CKPT / "base.safetensors").exists():
        print("no example checkpoints: run python example_project/build_checkpoints.py first", file=sys.stderr)
        return 2
    labels = ["-n 0", "-n 2", *(["-n 2 --dist load"] if args.with_load else [])]
    modes = ["cold", "warm"] if args.cache == "both" else [args.cache]
    work = Path(tempfile.mkdtemp(prefix="xdist-bench-"))
    t0 = time.time()
    load0 = os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in load0)}", flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for mode in modes:
            results[mode] = measure(labels, args.pairs, mode == "warm", work, args.tests)
        floor = measure_floor(args.pairs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = False
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"Linux autogroup scheduling: {'on' if autogroup else 'off'}",
        f"- load average (1, 5, 15 min) at start / end: {' '.join(f'{x:.1f}' for x in load0)} / {' '.join(f'{x:.1f}' for x in load1)}; "
        f"total {(time.time() - t0) / 60:.1f} min",
        f"- tests: example_project/{' '.join(args.tests)}; command: `python benchmarks/xdist_bench.py --pairs {args.pairs}"
        f"{' --with-load' if args.with_load else ''}{'' if args.cache == 'both' else f' --cache {args.cache}'}`",
        "",
    ]
    for i, mode in enumerate(modes):
        lines += report_lines(mode, results[mode], floor if i == 0 else None) + [""]
    print()
    print("\n".join(lines))
    if args.write:
        write_section(
            "xdist", ["## pytest-xdist: `-n 2` vs `-n 0` on the example gate (`benchmarks/xdist_bench.py`)", "", *lines]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
