"""Scaling of whole runs (issue 18, point 6): a pytest run at 1k / 10k / 60k examples, with the
share of its time per stage.

Each run is a fresh ``python`` process running ``pytest.main`` on a project built in a temporary
folder: the example project's CNN (``example_project/cnn.py`` and its base / tuned checkpoints)
checked on the Fashion-MNIST *train* split (60,000 images; ``--forgetting-limit`` takes the
seeded 1,000 / 10,000 subsets), two checks: accuracy (the 0/1 path) and macro-F1 (the aggregate
bootstrap path). Cold = an empty cache folder; warm = the same run again (base outputs cached).

Stages, timed inside the process by wrapping the plugin's functions:

- ``imports``: ``import torch`` (and numpy, safetensors), which the plugin does at the first check;
- ``task build``: the task registry building the task (reading the IDX files);
- ``load``: loading and validating the checkpoints (``ForgettingSession._load_new``);
- ``evaluation``: running the models (``ForgettingSession._run``);
- ``statistics``: deciding the checks (``ForgettingSession._decide``);
- ``collection``: pytest's collection (the plugin validates markers there);
- ``report``: the table and the JSON report (``runner.terminal_summary``);
- ``other``: the rest of the process (Python start-up, pytest and its plugins, fingerprints, the cache).

Children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed, as on a developer's
machine or a CI cache), after one unmeasured warm-up run that fills the caches.

The decision-core part of point 6 (n = 1e3..1e6 per statistical path) belongs with ``stats.py``.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/scaling.py [--sizes 1000,10000,60000] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
STAGES = ("imports", "collection", "task build", "load", "evaluation", "statistics", "report")

TESTS = '''
import pytest


@pytest.mark.retains("fashion-mnist", max_drop=0.05, split="train")
def test_accuracy():
    pass


@pytest.mark.retains("fashion-mnist", max_drop=0.05, split="train", metric="f1_macro")
def test_macro_f1():
    pass
'''

# runs inside the child process: wraps the stages, runs pytest, prints the timings as JSON
CHILD = r'''
import json, sys, time
start = time.perf_counter()
timings = {}


stack = []


def timed(stage, fn):
    """Time spent in ``fn`` less the time of the stages it calls (a task built while collecting is task build)."""
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        stack.append(0.0)
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t
            inner = stack.pop()
            timings[stage] = timings.get(stage, 0.0) + elapsed - inner
            if stack:
                stack[-1] += elapsed
    return wrapper


import pytest
t = time.perf_counter()
import numpy, torch, safetensors.torch  # what the first check imports
timings["imports"] = time.perf_counter() - t
from pytest_forgetting import runner, session
from pytest_forgetting.registry import TaskRegistry
TaskRegistry.get = timed("task build", TaskRegistry.get)
S = session.ForgettingSession
S._load_new = timed("load", S._load_new)
S._run = timed("evaluation", S._run)
S._decide = timed("statistics", S._decide)
runner.terminal_summary = timed("report", runner.terminal_summary)
import _pytest.main
_pytest.main.Session.perform_collect = timed("collection", _pytest.main.Session.perform_collect)
code = pytest.main(sys.argv[1:])
timings["total"] = time.perf_counter() - start
print("SCALING-TIMINGS " + json.dumps({"exit": int(code), **timings}))
'''


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def build_project(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "cnn.py", folder / "cnn.py")
    (folder / "test_scale.py").write_text(TESTS)
    (folder / "pytest.ini").write_text("[pytest]\nforgetting_model_factory = cnn:build_model\n")


def run(folder: Path, n: int, cache: Path) -> dict:
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", f"--base-ckpt={EXAMPLE / 'checkpoints' / 'base.safetensors'}",
            f"--tuned-ckpt={EXAMPLE / 'checkpoints' / 'tuned.safetensors'}", f"--forgetting-cache-dir={cache}",
            "--forgetting-device=cpu", f"--forgetting-json={folder / 'report.json'}", "--forgetting-progress=off"]  # fmt: skip
    if n < 60000:
        args.append(f"--forgetting-limit={n}")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=folder, capture_output=True, text=True,
                          env=_child_env())  # fmt: skip
    wall = time.perf_counter() - t
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SCALING-TIMINGS ")), None)
    if line is None:
        raise SystemExit(f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    timings = json.loads(line.split(" ", 1)[1])
    timings["wall"] = wall
    timings["other"] = wall - sum(timings.get(s, 0.0) for s in STAGES)
    return timings


def table(results: list[dict]) -> list[str]:
    head = "| n | run | wall s | " + " | ".join(STAGES) + " | other |"
    lines = [head, "|" + "---|" * (len(STAGES) + 4)]
    for r in results:
        t = r["timings"]
        cells = [f"{t.get(s, 0.0):.2f} s ({100 * t.get(s, 0.0) / t['wall']:.0f}%)" for s in (*STAGES, "other")]
        lines.append(f"| {r['n']:,} | {r['run']} | {t['wall']:.1f} | " + " | ".join(cells) + " |")
    return lines


def write_section(name: str, lines: list[str]) -> None:
    """Replace (or append) this benchmark's section of benchmarks/RESULTS.md, between its markers."""
    path = Path(__file__).resolve().parent / "RESULTS.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def machine() -> str:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}; load average {' '.join(f'{x:.1f}' for x in load)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,60000")
    ap.add_argument("--json")
    ap.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args()
    results = []
    started = machine()
    with tempfile.TemporaryDirectory(prefix="forgetting-scaling-") as tmp:
        folder = Path(tmp) / "project"
        build_project(folder)
        run(folder, 1000, Path(tmp) / "cache-warm-up")  # fills the bytecode caches
        for n in (int(x) for x in args.sizes.split(",")):
            cache = Path(tmp) / f"cache-{n}"
            for kind in ("cold", "warm"):
                timings = run(folder, n, cache)
                results.append({"n": n, "run": kind, "timings": timings})
                print(f"n={n:>6} {kind}: {timings['wall']:.1f} s  " + ", ".join(f"{s} {timings.get(s, 0.0):.2f}" for s in STAGES), flush=True)
    print("\n".join(table(results)))
    if args.results:
        write_section("scaling", [
            "## Whole runs at 1k / 10k / 60k examples, time per stage (`benchmarks/scaling.py`)", "",
            "The example project's CNN (base and tuned checkpoints) on the Fashion-MNIST train split (seeded subsets via",
            "`--forgetting-limit`), two checks (accuracy, macro-F1); one fresh process per run; cold = empty cache, warm = run again.",
            f"Machine: {started} (a shared machine: compare shares, not seconds).", "", *table(results), "",
            "Stages are exclusive (a task built while pytest collects counts as task build). *other*: Python and pytest start-up, "
            "pytest plugins (Hypothesis' terminal-summary hook imports hypothesis), checkpoint fingerprints, the cache. "
            "Warm runs reuse both models' outputs (the cache keeps tuned evaluations too); what is left at 60k is the "
            "statistics (the aggregate macro-F1 bootstrap, stats.py: issue 18 point 2).",
        ])  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
