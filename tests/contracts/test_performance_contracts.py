"""Structural guarantees behind the performance figures (benchmarks/bench.py measures the times).

Nothing here is timed. Each test pins a property that keeps evaluation at the cost of the
forward passes: preparation shared by both models, no base load when its evaluation is
cached, no per-example Python in the batching hot path, pinned non-blocking copies, and no
multi-second imports that the evaluation does not need.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from text_helpers import check, make_tokenizer, save, sentiment_texts, session, tiny_bert

from pytest_forgetting import checkpoints
from pytest_forgetting.evaluate import _to_device, deterministic, run_model
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks import classification
from pytest_forgetting.tasks.base import ModelMeta
from pytest_forgetting.tasks.classification import ImageClassificationTask, TextClassificationTask, padded_batches

TEXT_TASK = "perf-contract-text"
IMAGE_TASK = "perf-contract-images"


@pytest.fixture
def tasks():
    """Two registered tasks (removed again afterwards, so other tests see the registry unchanged)."""
    texts, labels = sentiment_texts(160, seed=0)
    rng = np.random.default_rng(0)
    images, y = rng.random((96, 1, 1, 5), dtype=np.float32), np.arange(96) % 4
    made = {
        TEXT_TASK: lambda: TextClassificationTask(texts, labels, max_length=16),
        IMAGE_TASK: lambda: ImageClassificationTask(images, y),
    }
    with contextlib.ExitStack() as stack:
        for name, factory in made.items():
            stack.enter_context(REGISTRY.temporary(name, factory, origin=f"{__name__}.{name}"))
        yield made


@pytest.fixture
def bert_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Base and tuned tiny BERT classifiers as HF folders, each with its own copy of one tokenizer."""
    base = save(tiny_bert(seed=0, num_labels=2), tmp_path / "base", make_tokenizer())
    tuned = save(tiny_bert(seed=1, num_labels=2), tmp_path / "tuned", make_tokenizer())
    return base, tuned


class Spy:
    """Counts calls of a wrapped callable, keeping its behaviour."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


# -- preparation runs once and is shared -----------------------------------------------------------
def test_tokenisation_runs_once_per_task_and_tokenizer_for_both_models(tasks, bert_folders, tmp_path, monkeypatch):
    spy = Spy(classification.tokenize_padded)
    monkeypatch.setattr(classification, "tokenize_padded", spy)
    sess = session(*bert_folders, tmp_path)
    result = sess.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert result.row["n"] == 160 and result.row["verdict"] != "error"
    assert sess.base.loaded is not None and sess.tuned_slot().loaded is not None
    # two tokenizer objects (one per checkpoint folder), the same vocabulary: tokenised once
    assert sess.base.loaded.tokenizer is not sess.tuned_slot().loaded.tokenizer
    assert len(spy.calls) == 1
    sess.run_check(check(TEXT_TASK, metric="f1_macro", max_drop=0.5), test="t2")  # another check, same task
    assert len(spy.calls) == 1


def test_image_preparation_runs_once_for_both_models(tasks, tmp_path, monkeypatch):
    task = REGISTRY.get(IMAGE_TASK)
    spy = Spy(task.prepare)
    monkeypatch.setattr(task, "prepare", spy)
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4))
    tuned = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4))
    sess = session("unused-base", "unused-tuned", tmp_path, no_cache=True)
    b, t = sess.module_slot("base", base), sess.module_slot("tuned", tuned)
    sess.run_check(check(IMAGE_TASK, max_drop=0.5), test="t", base=b, tuned=t)
    assert len(spy.calls) == 1


# -- a cached base is never loaded -------------------------------------------------------------------
def test_cached_base_evaluation_never_loads_the_base_checkpoint(tasks, bert_folders, tmp_path, monkeypatch):
    first = session(*bert_folders, tmp_path)
    cold = first.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert cold.row["base_cached"] is False

    loads = Spy(checkpoints.load_checkpoint)
    monkeypatch.setattr(checkpoints, "load_checkpoint", loads)
    second = session(*bert_folders, tmp_path)  # a new process's session, same cache directory
    warm = second.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert warm.row["base_cached"] is True
    assert second.base.loaded is None  # the base slot stays empty: never resident next to the tuned model
    assert [kw.get("role") for _, kw in loads.calls] == ["tuned"]
    for key in ("n", "base", "tuned", "drop", "ci_low", "ci_high", "verdict"):
        assert warm.row[key] == cold.row[key]


def test_warm_run_does_not_reread_an_unchanged_base_checkpoint(tasks, bert_folders, tmp_path, monkeypatch):
    """The base's fingerprint (the cache key) comes from remembered file digests, not from its bytes."""
    monkeypatch.setattr(checkpoints.FileDigests, "RACY_NS", 0)  # as if the checkpoints were written long ago
    cold = session(*bert_folders, tmp_path).run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert (tmp_path / "cache" / "file-digests.json").is_file()

    from _helpers.checkpoint_models import spy_on_checkpoint_reads

    opened: list[str] = []
    spy_on_checkpoint_reads(monkeypatch, lambda f, *a, **k: opened.append(str(f)) or open(f, *a, **k))
    second = session(*bert_folders, tmp_path)  # a new process's session: a fresh FileDigests on the same store
    warm = second.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert warm.row["base_cached"] is True and warm.row["verdict"] == cold.row["verdict"]
    base_reads = [Path(p).name for p in opened if p.startswith(str(bert_folders[0]))]
    assert base_reads and not [n for n in base_reads if n.endswith(".safetensors")]  # only its small JSON metadata


# -- tokenised inputs are cached on disk with the task fingerprint -------------------------------------
def _prepared_entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("prepared-*.npz"))


def test_tokenised_inputs_are_cached_across_sessions(tasks, bert_folders, tmp_path, monkeypatch):
    first = session(*bert_folders, tmp_path)
    cold = first.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    entries = _prepared_entries(tmp_path / "cache")
    assert len(entries) == 1

    def must_not_tokenise(*args, **kwargs):
        raise AssertionError("tokenised again although the cache holds this task's inputs")

    monkeypatch.setattr(classification, "tokenize_padded", must_not_tokenise)
    for entry in (tmp_path / "cache").glob("tuned-*.npz"):  # as for a new tuned model: its evaluation runs
        entry.unlink()
    second = session(*bert_folders, tmp_path)  # a new run: base from the eval cache, inputs from disk
    warm = second.run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    for key in ("n", "base", "tuned", "drop", "ci_low", "ci_high", "verdict"):
        assert warm.row[key] == cold.row[key]
    # the tuned model got exactly the tensors tokenisation makes
    prepared = second._prepared[next(iter(second._prepared))]
    meta = second._meta(second.tuned_slot().loaded)
    monkeypatch.undo()
    fresh = classification.tokenize_padded(meta, REGISTRY.get(TEXT_TASK).split("test").inputs, 16, TEXT_TASK)
    assert set(prepared["tensors"]) == set(fresh["tensors"])
    for k, t in fresh["tensors"].items():
        assert prepared["tensors"][k].dtype == t.dtype and torch.equal(prepared["tensors"][k], t)
    np.testing.assert_array_equal(prepared["lengths"], fresh["lengths"])


def test_prepared_cache_key_covers_tokenizer_settings_and_data(tasks, bert_folders, tmp_path):
    """The key is the tokenizer's behaviour, not its folder: same tokenizer elsewhere = same id; same
    vocabulary with another normaliser or truncation side = another id; another max_length = another entry."""
    from transformers import AutoTokenizer

    from pytest_forgetting.session import _tokenizer_cache_id

    a, b = (AutoTokenizer.from_pretrained(str(f)) for f in bert_folders)
    assert _tokenizer_cache_id(a) is not None and _tokenizer_cache_id(a) == _tokenizer_cache_id(b)
    assert a("Great MOVIE")["input_ids"] == b("Great MOVIE")["input_ids"]
    b.backend_tokenizer.normalizer = None  # no lower-casing: other ids for capitalised words
    assert a("Great MOVIE")["input_ids"] != b("Great MOVIE")["input_ids"]
    assert _tokenizer_cache_id(a) != _tokenizer_cache_id(b)
    c = AutoTokenizer.from_pretrained(str(bert_folders[0]), truncation_side="left")
    assert _tokenizer_cache_id(c) != _tokenizer_cache_id(a)
    assert _tokenizer_cache_id(object()) is None  # not a fast tokenizer: memoised in-process only

    session(*bert_folders, tmp_path).run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert len(_prepared_entries(tmp_path / "cache")) == 1
    texts, labels = sentiment_texts(160, seed=0)
    with REGISTRY.temporary(TEXT_TASK, lambda: TextClassificationTask(texts, labels, max_length=8), origin="test"):
        session(*bert_folders, tmp_path).run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert len(_prepared_entries(tmp_path / "cache")) == 2


def test_damaged_prepared_entry_is_recomputed(tasks, bert_folders, tmp_path):
    cold = session(*bert_folders, tmp_path).run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    (entry,) = _prepared_entries(tmp_path / "cache")
    entry.write_bytes(b"not a zip file")
    for tuned_entry in (tmp_path / "cache").glob("tuned-*.npz"):  # as for a new tuned model: its inputs are prepared
        tuned_entry.unlink()
    warm = session(*bert_folders, tmp_path).run_check(check(TEXT_TASK, max_drop=0.5), test="t")
    assert warm.row["tuned"] == cold.row["tuned"] and warm.row["verdict"] == cold.row["verdict"]
    assert entry.read_bytes()[:2] == b"PK"  # replaced by a good entry


def test_prepared_cache_round_trip_and_refusals(tmp_path):
    from pytest_forgetting.cache import EvalCache

    cache = EvalCache(tmp_path)
    tree = {
        "tensors": {"input_ids": torch.arange(6).view(2, 3), "mask": torch.ones(2, 3, dtype=torch.bool)},
        "lengths": np.array([3, 2]),
    }
    assert cache.store_prepared("k", tree)
    back = cache.load_prepared("k")
    assert (
        torch.equal(back["tensors"]["input_ids"], tree["tensors"]["input_ids"])
        and back["tensors"]["mask"].dtype == torch.bool
    )
    assert isinstance(back["lengths"], np.ndarray) and back["lengths"].tolist() == [3, 2]
    # anything that is not a mapping of arrays is not stored (word-id lists, objects, non-str keys)
    assert not cache.store_prepared("a", {"words": [[0, 1], [None]]})
    assert not cache.store_prepared("b", {1: np.zeros(2)})
    assert not cache.store_prepared("c", [np.zeros(2)])
    assert not cache.store_prepared("d", {"x": np.array([object()])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared-k.npz"]
    assert EvalCache(tmp_path, enabled=False).load_prepared("k") is None


def test_decision_core_imports_no_scipy():
    """scipy.stats/optimize cost ~1.5 s per process; the plugin's decision path must not pay it."""
    import subprocess
    import sys

    code = "import sys, pytest_forgetting.session, pytest_forgetting.sequential; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- no per-example Python in the hot path -------------------------------------------------------------
def _python_lines(fn) -> int:
    """Python line events executed by ``fn()`` in any frame (library code included)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


def _same_work_per_batch(make_run, batches: int = 6) -> tuple[int, int]:
    """Line counts for ``batches`` batches of 4 examples and of 256 examples (after a warm-up)."""
    small, large = make_run(4, batches), make_run(256, batches)
    small(), large()
    return _python_lines(small), _python_lines(large)


@pytest.mark.parametrize("order", ["contiguous", "shuffled"])
def test_image_batching_has_no_per_example_python(order):
    def make_run(batch_size: int, batches: int):
        n = batch_size * batches
        task = ImageClassificationTask(np.zeros((n, 1, 2, 2), dtype=np.float32), np.arange(n) % 3)
        prepared = task.prepare("test", ModelMeta())
        idx = np.arange(n) if order == "contiguous" else np.random.default_rng(0).permutation(n)
        return lambda: list(task.batches(prepared, idx, batch_size))

    small, large = _same_work_per_batch(make_run)
    assert large <= small + 20, f"{large - small} more Python lines for 64x the examples: a per-example loop"


def test_text_batching_has_no_per_example_python():
    rng = np.random.default_rng(0)

    def make_run(batch_size: int, batches: int):
        n = batch_size * batches
        lengths = rng.integers(1, 12, size=n)
        ids = torch.zeros((n, 12), dtype=torch.int64)
        prepared = {"tensors": {"input_ids": ids, "attention_mask": ids.clone()}, "lengths": lengths}
        idx = rng.permutation(n)
        return lambda: list(padded_batches(prepared, idx, batch_size))

    small, large = _same_work_per_batch(make_run)
    assert large <= small + 20, f"{large - small} more Python lines for 64x the examples: a per-example loop"


def test_the_whole_evaluation_loop_has_no_per_example_python():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()

    def make_run(batch_size: int, batches: int):
        n = batch_size * batches
        task = ImageClassificationTask(np.zeros((n, 1, 2, 2), dtype=np.float32), np.arange(n) % 3)
        prepared = task.prepare("test", ModelMeta())
        idx = np.random.default_rng(1).permutation(n)
        return lambda: run_model(task, model, prepared, idx, task.ids("test"), device="cpu", dtype="float32",
                                 batch_size=batch_size, static=task.static_outputs("test"))  # fmt: skip

    small, large = _same_work_per_batch(make_run)
    assert large <= small + 40, f"{large - small} more Python lines for 64x the examples: a per-example loop"


# -- copies to the device ------------------------------------------------------------------------------
def test_batches_reach_cuda_through_pinned_memory_and_non_blocking_copies(monkeypatch):
    pinned: list[tuple] = []
    moved: list[dict] = []

    def pin_memory(self, *args, **kwargs):
        pinned.append(tuple(self.shape))
        return self

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            moved.append(kwargs)
            return self  # no CUDA here: record the call, keep the tensor
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    batch = {
        "input_ids": torch.zeros((2, 3), dtype=torch.int64),
        "pixel_values": torch.zeros((2, 1, 2, 2), dtype=torch.float64),
    }
    out = _to_device(batch, torch.device("cuda"), torch.float32)
    assert sorted(pinned) == [(2, 1, 2, 2), (2, 3)]
    assert len(moved) == 2 and all(kw.get("non_blocking") is True for kw in moved)
    assert out["pixel_values"].dtype == torch.float32 and out["input_ids"].dtype == torch.int64

    pinned.clear()
    _to_device(batch, torch.device("cpu"), torch.float32)
    assert pinned == []  # pinning is for host-to-GPU copies only


def test_every_batch_goes_through_the_device_copy(monkeypatch):
    from pytest_forgetting import evaluate

    spy = Spy(evaluate._to_device)
    monkeypatch.setattr(evaluate, "_to_device", spy)
    task = ImageClassificationTask(np.zeros((50, 1, 2, 2), dtype=np.float32), np.arange(50) % 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    run_model(
        task,
        model,
        task.prepare("test", ModelMeta()),
        np.arange(50),
        task.ids("test"),
        device="cpu",
        dtype="float32",
        batch_size=16,
    )
    assert len(spy.calls) == 4


# -- state and imports -----------------------------------------------------------------------------------
def test_deterministic_mode_is_restored_and_skips_filling_fresh_memory():
    fill = torch._C._get_deterministic_fill_uninitialized_memory
    before = (torch.are_deterministic_algorithms_enabled(), fill())
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert fill() is False  # no NaN-fill of every new activation while evaluating
    assert (torch.are_deterministic_algorithms_enabled(), fill()) == before


def test_evaluation_and_builtin_tasks_avoid_multi_second_imports():
    """deterministic() must not import torch._inductor (dynamo, sympy: seconds); mnist and digits
    must not import pandas or scikit-learn to read their bundled files."""
    code = (
        "import sys, numpy as np\n"
        "from pytest_forgetting.tasks import builtin\n"
        "x, y = builtin.load_mnist_arrays()\n"
        "assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64, (x.shape, x.dtype)\n"
        "d, t = builtin.load_digits_arrays()\n"
        "assert d.shape == (1797, 8, 8) and d.dtype == np.float32 and 0 <= d.min() and d.max() <= 1\n"
        "import torch\n"
        "from pytest_forgetting.evaluate import deterministic\n"
        "with deterministic():\n"
        "    pass\n"
        "print(sorted(m for m in ('torch._inductor.config', 'torch._dynamo', 'sympy', 'pandas', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_digits_read_directly_are_scikit_learns_digits():
    from sklearn.datasets import load_digits

    from pytest_forgetting.tasks.builtin import load_digits_arrays

    x, y = load_digits_arrays()
    d = load_digits()
    assert np.array_equal(x, (d.images / 16.0).astype(np.float32)) and np.array_equal(y, d.target)
