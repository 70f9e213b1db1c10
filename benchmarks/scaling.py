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
- ``load``: loading and validating the checkpoints (``engine.models.Models._load_new``);
- ``evaluation``: running the models (``engine.evaluation.Evaluation.run``);
- ``statistics``: deciding the checks (``engine.decision.decide``);
- ``collection``: pytest's collection (the plugin validates markers there);
- ``report``: the table and the JSON report (``summary.terminal_summary``);
- ``other``: the rest of the process (Python start-up, pytest and its plugins, fingerprints, the cache).

Children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed, as on a developer's
machine or a CI cache), after one unmeasured warm-up run that fills the caches.

The decision-core part of point 6: ``--core`` times one decision of each statistical path (0/1, continuous,
macro-F1, balanced accuracy, entity F1, WER, perplexity, per-class budgets with 10 / 100 / 1000 classes) at
n = 1e3 .. 1e6 with its peak memory: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py --core [--give-up 60]``.

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

TESTS = """
import pytest


@pytest.mark.retains("fashion-mnist", max_drop=0.05, split="train")
def test_accuracy():
    pass


@pytest.mark.retains("fashion-mnist", max_drop=0.05, split="train", metric="f1_macro")
def test_macro_f1():
    pass
"""

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
from pytest_forgetting import session, summary
from pytest_forgetting.registry import TaskRegistry
TaskRegistry.get = timed("task build", TaskRegistry.get)
from pytest_forgetting.engine import decision, evaluation, models
models.Models._load_new = timed("load", models.Models._load_new)
evaluation.Evaluation.run = timed("evaluation", evaluation.Evaluation.run)
decision.decide = timed("statistics", decision.decide)
summary.terminal_summary = timed("report", summary.terminal_summary)
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


from bucketing import write_section  # noqa: E402  (one RESULTS.md section writer for the benchmarks)


def machine() -> str:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; load average {' '.join(f'{x:.1f}' for x in load)}"
    )


# --- decision core (issue 18, point 6): n = 1e3..1e6 per statistical path ------------------------

CORE_SIZES = (1_000, 10_000, 100_000, 1_000_000)


def _core_decide(metric, ob: dict, ot: dict, n: int, **kw):
    """What ``engine.decision.decide`` calls for an aggregate metric (stat, ratio form, bounded flag, sensitivity)."""
    from pytest_forgetting import stats
    from pytest_forgetting.metrics import ratio_of

    agg = metric.aggregate
    return stats.compare_statistic(lambda idx: (agg(ob, idx), agg(ot, idx)), n, ratio=ratio_of(metric, ob, ot),
                                   bounded=metric.bounded,
                                   sensitivity=metric.sensitivity(ob, ot) if metric.sensitivity else None, **kw)  # fmt: skip


def _core_inputs(path: str, n: int):
    """(callable that decides, description) for one path at n examples; seeded, built outside the timing."""
    import numpy as np

    from pytest_forgetting import stats

    rng = np.random.default_rng(12345)
    common = dict(alpha=0.05, seed=0, fail_alpha=0.025)
    if path in ("0/1 absolute", "0/1 relative"):
        b = (rng.random(n) < 0.8).astype(float)
        flip = rng.random(n) < 0.05
        t = np.where(flip, 1.0 - b, b)
        rel = path.endswith("relative")
        return lambda: stats.compare_scores(b, t, max_drop=0.02, relative=rel, **common)
    if path in ("continuous absolute", "continuous relative"):
        b = 3.0 + rng.normal(0, 0.5, n)
        t = b + 0.05 + rng.normal(0, 0.3, n)
        rel = path.endswith("relative")
        return lambda: stats.compare_scores(
            b, t, max_drop=0.05 if rel else 0.1, relative=rel, higher_is_better=False, **common
        )
    if path.startswith("macro-F1") or path.startswith("balanced accuracy"):
        from pytest_forgetting.metrics import BALANCED_ACCURACY, F1_MACRO

        k = 10
        y = rng.integers(0, k, size=n)
        pred_b = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, size=n))
        pred_t = np.where(rng.random(n) < 0.05, rng.integers(0, k, size=n), pred_b)
        metric = F1_MACRO if path.startswith("macro-F1") else BALANCED_ACCURACY
        ob, ot = {"label": y, "pred": pred_b}, {"label": y, "pred": pred_t}
        return lambda: _core_decide(metric, ob, ot, n, max_drop=0.02, higher_is_better=True, **common)
    if path == "entity F1":
        from pytest_forgetting.tasks.token import TagTable, entity_metrics

        words = 12
        metric = entity_metrics(TagTable.from_tags(["O", "B-X"]))["f1"]
        gold_ent = rng.random((n, words)) < 0.15
        hit_b = gold_ent & (rng.random((n, words)) < 0.8)
        fp_b = ~gold_ent & (rng.random((n, words)) < 0.02)
        churn = rng.random((n, words)) < 0.03
        pred_b = hit_b | fp_b
        pred_t = np.where(churn, ~pred_b & (gold_ent | (rng.random((n, words)) < 0.02)), pred_b)
        ob = {"tag_pred": pred_b.astype(np.int64), "tag_gold": gold_ent.astype(np.int64)}
        ot = {"tag_pred": pred_t.astype(np.int64), "tag_gold": gold_ent.astype(np.int64)}
        # the per-sentence entity counts (the metric's sufficient statistics, memoised per output
        # array) are built here, outside the timing, like every other path's per-example inputs
        metric.value(ob), metric.value(ot)
        return lambda: _core_decide(metric, ob, ot, n, max_drop=0.05, higher_is_better=True, **common)
    if path == "WER":
        from pytest_forgetting.metrics import WER

        words = 1 + rng.poisson(11, n)
        err_b = rng.binomial(words, 0.15)
        err_t = err_b + rng.binomial(words - err_b, 0.02) - rng.binomial(err_b, 0.05)
        ob = {"word_errors": err_b.astype(float), "ref_words": words.astype(float)}
        ot = {"word_errors": err_t.astype(float), "ref_words": words.astype(float)}
        return lambda: _core_decide(WER, ob, ot, n, max_drop=0.02, higher_is_better=False, **common)
    if path == "perplexity relative":
        from pytest_forgetting.metrics import PERPLEXITY

        ntok = (2 + rng.poisson(30, n)).astype(float)
        mu = 3.0 + rng.normal(0, 0.3, n)
        ob = {"nll": ntok * mu, "ntok": ntok}
        ot = {"nll": ntok * (mu + 0.01 + rng.normal(0, 0.2, n)), "ntok": ntok}
        return lambda: _core_decide(
            PERPLEXITY, ob, ot, n, max_drop=0.05, relative=True, higher_is_better=False, **common
        )
    if path.startswith("per-class"):
        k = int(path.split()[1])
        labels = rng.integers(0, k, size=n)
        b = rng.random(n) < 0.8
        t = np.where(rng.random(n) < 0.05, ~b, b)
        return lambda: stats.class_drops(b.astype(float), t.astype(float), labels, limit=0.1, alpha=0.05)
    raise ValueError(f"unknown path {path!r}")


CORE_NOTE = (
    "Resampling by counts: groups of identical examples (macro-F1 / balanced accuracy: (label, base, tuned) cells; WER and "
    "entity F1: their small per-example counts) are resampled as one multinomial draw per resample, the same distribution as n "
    "uniform indices. Scores that rarely repeat (continuous means, per-example NLL, perplexity's token sums) would need n indices "
    "per resample (2 x 10^9 draws at n = 1e6): from n = 50,000 (`stats._ANALYTIC_MIN_N`) those paths take the interval the "
    "bootstrap-t approximates from its one-term Edgeworth expansion instead (`stats._edgeworth_bounds`, method `edgeworth-t`: Hall "
    "1992's skewness-corrected studentised interval, Johnson's modified t for a plain mean; the bootstrap still decides where the "
    "correction is not small). Entity F1 goes through the Ratio form (2 sum tp / (sum predicted + sum gold), the same statistic) "
    "instead of BCa over a black box; its per-sentence entity counts are built outside the timing, as the other paths' inputs "
    "are. Per-class: every class's bounds (a class budget gates the check); without a budget the session asks only for the "
    "worst 3 (`class_drops(worst=3)`). Peak RSS: the child process's resident high-water mark during the decision (VmHWM, reset just "
    "before it through /proc/self/clear_refs; Python, numpy and the inputs included); 'before' is its resident size just "
    "before the decision. Side by side (--against): on a loaded machine one decision's "
    "CPU seconds vary by about +-30 % from run to run, and the first of a back-to-back pair tends to pay more (with the new "
    "code always first, balanced accuracy at 1e6 read 0.73x; alternating, 1.1x), so ratios within 0.7-1.3x are noise; the "
    "new side runs the working tree as it is (other helpers' uncommitted edits included)."
)

CORE_PATHS = ("0/1 absolute", "0/1 relative", "continuous absolute", "continuous relative", "macro-F1 (10 classes)",
              "balanced accuracy (10 classes)", "entity F1", "WER", "perplexity relative",
              "per-class 10", "per-class 100", "per-class 1000")  # fmt: skip


CHILD_CORE = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[3])
import scaling
sys.path.insert(0, sys.argv[4])  # the package under test (scaling's imports put this checkout first)
import pytest_forgetting
path, n = sys.argv[1], int(sys.argv[2])
scaling._core_inputs(path, 1000)()  # warm-up: first-call costs (lazy imports, caches) are not the decision's
decide = scaling._core_inputs(path, n)
def rss_now():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_now()
def hwm():  # the resident high-water mark (VmHWM), reset just before the decision: the decision's own peak
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")) / 1024
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass  # no reset: the peak then includes building the inputs
t = time.perf_counter()
cpu = time.process_time()
res = decide()
secs, cpu = time.perf_counter() - t, time.process_time() - cpu
peak_rss = hwm()
peak = None
if secs <= 10.0:  # again under tracemalloc (which slows Python-heavy code), for the traced peak only
    tracemalloc.start()
    decide()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
verdict = res.verdict if hasattr(res, "verdict") else f"{len(res)} classes"
print("CORE " + json.dumps({"package": pytest_forgetting.__file__, "seconds": secs, "cpu": cpu, "peak_mb": peak, "rss_mb": peak_rss, "rss_before_mb": before,
                            "verdict": verdict, "method": getattr(res, "method", "class_drops")}))
"""


def _core_child(path: str, n: int, tree: Path) -> dict:
    """One decision in a fresh process importing pytest_forgetting from ``tree`` (this checkout, or an exported
    older commit for --against)."""
    here = str(Path(__file__).resolve().parent)
    env = dict(_child_env(), PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", CHILD_CORE, path, str(n), here, str(tree)], capture_output=True, text=True,
                          cwd=tree, env=env)  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CORE ")), None)
    if line is None:
        raise SystemExit(f"core run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    r = json.loads(line.split(" ", 1)[1])
    if not Path(r["package"]).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"the child imported {r['package']}, not the package under {tree}")
    return r


def core_main(sizes: list[int], paths: list[str], give_up: float, against: Path | None = None) -> list[dict]:
    """Time each path's decision at each n in a fresh child process (inputs built outside the timing), with its
    peak traced memory and the child's peak RSS. A path slower than ``give_up`` seconds is not run at larger n.
    With ``against`` (a tree of an older commit), the same decision there right after, side by side."""
    out = []
    variants = [("new", ROOT)] + ([("old", against)] if against is not None else [])
    for path in paths:
        slow: dict[str, float] = {}
        for i, n in enumerate(sizes):
            # alternate which side runs first (the first of a pair tends to pay for the machine's state)
            for variant, tree in variants if i % 2 == 0 else variants[::-1]:
                if variant in slow:
                    print(
                        f"{path:<32} n={n:>9,}  [{variant}] skipped (took {slow[variant]:.1f} s at a smaller n)",
                        flush=True,
                    )
                    out.append(
                        {
                            "path": path,
                            "n": n,
                            "variant": variant,
                            "seconds": None,
                            "peak_mb": None,
                            "verdict": "skipped",
                        }
                    )
                    continue
                r = _core_child(path, n, tree)
                mem = "    n/a" if r["peak_mb"] is None else f"{r['peak_mb']:8.1f}"
                print(f"{path:<32} n={n:>9,}  [{variant}] {r['seconds']:8.3f} s (cpu {r['cpu']:.3f})  traced {mem} MiB  "
                      f"RSS {r['rss_mb']:7.1f} MiB (before {r['rss_before_mb']:.0f})  {r['verdict']} ({r['method']})", flush=True)  # fmt: skip
                out.append({"path": path, "n": n, "variant": variant, **r})
                if r["seconds"] > give_up:
                    slow[variant] = r["seconds"]
    return out


def compare_table(results: list[dict], sizes: list[int]) -> list[str]:
    """CPU seconds of the new code vs the old one (--against), per path and n, from the same run."""
    lines = ["| path | " + " | ".join(f"n = {n:,}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for path in dict.fromkeys(r["path"] for r in results):
        cells = []
        for n in sizes:
            got = {r.get("variant", "new"): r for r in results if r["path"] == path and r["n"] == n}
            new, old = got.get("new"), got.get("old")
            fmt = lambda r: "-" if r is None or r["seconds"] is None else f"{r['cpu']:.3f}"  # noqa: E731
            ratio = ""
            if new and old and new["seconds"] is not None and old["seconds"] is not None and new["cpu"] > 0:
                ratio = (
                    f" ({old['cpu'] / new['cpu']:.1f}x)"
                    if old["cpu"] >= new["cpu"]
                    else f" ({old['cpu'] / new['cpu']:.2f}x)"
                )
            cells.append(f"{fmt(new)} vs {fmt(old)}{ratio}")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return lines


def core_table(results: list[dict], sizes: list[int]) -> list[str]:
    lines = ["| path | " + " | ".join(f"n = {n:,}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for path in dict.fromkeys(r["path"] for r in results):
        cells = []
        for n in sizes:
            r = next(
                (r for r in results if r["path"] == path and r["n"] == n and r.get("variant", "new") == "new"), None
            )
            if r is None or r["seconds"] is None:
                cells.append("-")
            else:
                cell = f"{r['seconds']:.3f} s" + (f" (cpu {r['cpu']:.3f})" if r.get("cpu") is not None else "")
                cell += "" if r["peak_mb"] is None else f", {r['peak_mb']:.0f} MiB"
                if r.get("rss_mb") is not None:
                    cell += f", RSS {r['rss_mb']:.0f} ({r['rss_before_mb']:.0f})"
                cells.append(cell)
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,60000")
    ap.add_argument("--json")
    ap.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument(
        "--core", action="store_true", help="time the decision core of each statistical path instead of whole runs"
    )
    ap.add_argument("--core-sizes", default=",".join(str(n) for n in CORE_SIZES))
    ap.add_argument("--core-paths", default="all", help="comma-separated subset of: " + ", ".join(CORE_PATHS))
    ap.add_argument(
        "--give-up", type=float, default=60.0, help="--core: skip larger n of a path slower than this (seconds)"
    )
    ap.add_argument(
        "--from-json", help="--core: print (and with --results write) a run saved with --json instead of running"
    )
    ap.add_argument(
        "--against",
        help="--core: also time each decision with the package of this older commit (git archive), side by side",
    )
    args = ap.parse_args()
    if args.core:
        import platform

        sizes = [int(x) for x in args.core_sizes.split(",")]
        paths = list(CORE_PATHS) if args.core_paths == "all" else [p.strip() for p in args.core_paths.split(",")]
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        started = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {' '.join(f'{x:.1f}' for x in load)}")  # fmt: skip
        saved: dict = {}
        if args.from_json:  # a saved run (--json), written again (e.g. into RESULTS.md)
            saved = json.loads(Path(args.from_json).read_text())
            results, started = saved["results"], saved["machine"]
            sizes = sorted({r["n"] for r in results})
        else:
            against = None
            if args.against:
                against = Path(tempfile.mkdtemp(prefix="forgetting-against-"))
                archive = subprocess.run(
                    ["git", "archive", args.against], cwd=ROOT, capture_output=True, check=True
                ).stdout
                subprocess.run(["tar", "-x", "-C", str(against)], input=archive, check=True)
            results = core_main(sizes, paths, args.give_up, against)
        print("\n".join(core_table(results, sizes)))
        if any(r.get("variant") == "old" for r in results):
            print("\n".join(compare_table(results, sizes)))
        if args.results:
            write_section("scaling-core", [
                "## Decision core at n = 1e3 .. 1e6 per statistical path (`benchmarks/scaling.py --core`)", "",
                "Seconds for one decision as `engine.decision.decide` makes it, each in a fresh process (per-example inputs built "
                "outside the timing; for aggregates the timing includes the metric's ratio form and sensitivity), n_boot = 2000 where a "
                "bootstrap decides; the peak memory traced by tracemalloc in a second run (numpy buffers included; not measured past "
                "10 s); RSS: the process's peak resident MiB during the decision (in brackets, its resident MiB just before it). Wall seconds "
                "first, CPU seconds of the process in brackets (on a machine shared with other jobs the CPU time is the steadier one). "
                "`-`: not run, the path took longer than `--give-up` seconds at a smaller n.",
                f"Machine: {started}.", "", *core_table(results, sizes), "",
                CORE_NOTE,
                *([] if not any(r.get("variant") == "old" for r in results) else [
                    "", f"### Side by side in the same run: CPU seconds of this code vs commit {args.against or saved.get('against')} "
                    "(each in a fresh process, the two run back to back, which one first alternating with n; `-`: not run, slower than "
                    "`--give-up` at a smaller n)", "", *compare_table(results, sizes)]),
            ])  # fmt: skip
        if args.json:
            Path(args.json).write_text(
                json.dumps({"machine": started, "against": args.against, "results": results}, indent=2)
            )
        return
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
                print(
                    f"n={n:>6} {kind}: {timings['wall']:.1f} s  "
                    + ", ".join(f"{s} {timings.get(s, 0.0):.2f}" for s in STAGES),
                    flush=True,
                )
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
            "statistics (the aggregate macro-F1 bootstrap, stats/ratio.py and stats/bootstrap.py: issue 18 point 2).",
        ])  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
