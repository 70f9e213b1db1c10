"""lm-evaluation-harness tasks as retention checks: ``task="lm-eval:NAME"``.

The task source resolves ``NAME`` (a task, a group such as ``mmlu``, or a tag) through
lm-eval's own ``TaskManager``: first in the user's folders of YAML tasks
(``--forgetting-lm-eval-include DIR``), then among lm-eval's bundled tasks. Each model is
evaluated by lm-eval itself (``HFLM(pretrained=<the loaded module>, tokenizer=...)`` and
``lm_eval.evaluator.evaluate`` with ``log_samples``), with the same few-shot setting and seed,
batch size and chat-template setting for both models. The logged per-document metrics are
this task's per-example outputs, keyed ``SUBTASK:DOC_ID``, so the session aligns base and tuned
by document and decides paired: 0/1 metrics (``acc``, ``acc_norm``, ``exact_match``) with the
score interval for paired proportions, other mean-aggregated metrics with the paired bootstrap,
the perplexity family (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``) as ratios.

A group is one check whose subtasks are its classes (``label`` = subtask index): the worst
subtasks appear in the message and ``max_class_drop`` budgets each subtask. Documents of all
subtasks are pooled (each document counts once, as lm-eval's size-weighted group mean does).

This module imports only the standard library and numpy at import time; lm-eval, torch and
transformers are imported when an ``lm-eval:`` task is first built.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, TaskError
from ..metrics import AggregateMetric, Metric, PerExampleMetric
from .base import EvalResult, ModelMeta, Task

PREFIX = "lm-eval:"
#: lm-eval's default seeds (simple_evaluate): python's random, numpy, torch and the few-shot sampler
RANDOM_SEED, NUMPY_SEED, TORCH_SEED, FEWSHOT_SEED = 0, 1234, 1234, 1234
#: metrics that are 0/1 per document (bounded: margins are fractions)
_BINARY = frozenset({"acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match"})
_DOWNLOAD_HINT = (
    "with downloads off (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) lm-eval reads datasets from the local "
    "Hugging Face cache or local files: fetch it once on a machine with network "
    '(python -c "import datasets; datasets.load_dataset({args})"), or write the task as a YAML over local '
    "files (dataset_path: json, dataset_kwargs: {{data_files: {{test: data/test.jsonl}}}}) in a folder given to "
    "--forgetting-lm-eval-include"
)


class SourceSettings(tuple):
    """(include folders, few-shot override or None, chat template, system instruction): a plain tuple."""

    __slots__ = ()

    def __new__(
        cls,
        include: Sequence[str] = (),
        fewshot: int | None = None,
        chat_template: bool = False,
        system_instruction: str | None = None,
    ) -> SourceSettings:
        return super().__new__(cls, (tuple(str(p) for p in include), fewshot, bool(chat_template), system_instruction))

    include = property(lambda self: self[0])
    fewshot = property(lambda self: self[1])
    chat_template = property(lambda self: self[2])
    system_instruction = property(lambda self: self[3])


_settings = SourceSettings()
_managers: dict[tuple[tuple[str, ...], bool], Any] = {}


def configure(settings: Any) -> None:
    """Take the lm-eval options of a run (``Settings``); a change drops the lm-eval tasks built so far."""
    global _settings
    new = SourceSettings(
        getattr(settings, "lm_eval_include", ()) or (),
        getattr(settings, "lm_eval_fewshot", None),
        bool(getattr(settings, "lm_eval_chat_template", False)),
        getattr(settings, "lm_eval_system_instruction", None),
    )
    if new != _settings:
        _settings = new
        from ..registry import REGISTRY

        with REGISTRY._lock:
            for name, entry in REGISTRY.entries.items():
                if name.startswith(PREFIX):
                    entry.instance = None


def build(name: str) -> LmEvalTask:
    """The registry's factory for ``lm-eval:NAME`` (with this run's options)."""
    s = _settings
    return LmEvalTask(
        name,
        include=s.include,
        num_fewshot=s.fewshot,
        apply_chat_template=s.chat_template,
        system_instruction=s.system_instruction,
    )


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "lm-eval: tasks need lm-evaluation-harness: "
            "pip install 'pytest-forgetting[lm-eval]' (or pip install lm-eval)"
        ) from None
    return lm_eval


def task_manager(include: tuple[str, ...], *, defaults: bool) -> Any:
    """lm-eval's TaskManager over the include folders (and its bundled tasks when ``defaults``), once per process.

    Indexing the bundled tasks reads thousands of YAML files (seconds to tens of seconds), so a
    name found in the user's folders is resolved without them.
    """
    key = (include, defaults)
    if key not in _managers:
        _require_lm_eval()
        from lm_eval.tasks import TaskManager

        _managers[key] = TaskManager(include_path=list(include) or None, include_defaults=defaults)
    return _managers[key]


def _resolve(name: str, include: tuple[str, ...]) -> Any:
    if include:
        tm = task_manager(include, defaults=False)
        if name in tm.all_tasks:
            return tm
    tm = task_manager(include, defaults=True)
    if name not in tm.all_tasks:
        from .._util import suggest

        where = (
            f" or in {', '.join(include)}"
            if include
            else " (add folders of your own YAML tasks with --forgetting-lm-eval-include DIR)"
        )
        raise ConfigError(
            f"unknown lm-eval task {name!r}{suggest(name, tm.all_tasks)}: "
            f"not among lm-eval's tasks, groups and tags{where}"
        )
    return tm


def _dataset_args(tm: Any, name: str) -> str:
    entry = tm.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    path, sub = cfg.get("dataset_path"), cfg.get("dataset_name")
    if not path:
        return "'<dataset_path of the task>'"
    return repr(path) + (f", {sub!r}" if sub else "")


def _stable(obj: Any) -> Any:
    """A JSON-able, deterministic form of a task config or a document (callables by their source)."""
    if isinstance(obj, dict):
        return {str(k): _stable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if callable(obj):
        import inspect

        try:
            return "callable:" + inspect.getsource(obj)
        except (OSError, TypeError):
            return f"callable:{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    return repr(obj)


def _doc_digest(docs: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    if docs is None:
        return "none"
    for doc in docs:
        h.update(json.dumps(_stable(doc), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def _seeded_like_simple_evaluate() -> Iterator[None]:
    """lm-eval's default global seeds for the evaluation; the caller's RNG states are restored."""
    import random

    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(RANDOM_SEED)
    np.random.seed(NUMPY_SEED)
    torch.manual_seed(TORCH_SEED)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _finite(resps: Any) -> bool:
    """False when a logged response holds a NaN/Inf log-likelihood."""
    if isinstance(resps, float):
        return math.isfinite(resps)
    if isinstance(resps, (list, tuple)):
        return all(_finite(r) for r in resps)
    return True


def _metric_key(metric: str, flt: str) -> str:
    return metric if flt == "none" else f"{metric}@{flt}"


@dataclass(frozen=True)
class LmEvalDocuments:
    """The one split of an lm-eval task: each document's id (``SUBTASK:DOC_ID``) and subtask index."""

    ids: np.ndarray
    labels: np.ndarray


class LmEvalTask(Task):
    """An lm-evaluation-harness task or group, evaluated by lm-eval on the whole model.

    One split, ``test``: the documents lm-eval evaluates (its test split, else validation), kept
    in the store of every task (``Task._splits``) as an :class:`LmEvalDocuments` record.
    ``num_fewshot`` overrides the tasks' own few-shot count as lm-eval's ``--num_fewshot`` does
    (a task whose YAML fixes ``num_fewshot: 0`` keeps it); the few-shot sampler is seeded with
    ``fewshot_seed`` before each model's evaluation, so both models see the same contexts.
    """

    label_key = "label"  # the subtask of each document, for groups (static_outputs)
    pred_key = None
    finite_key = None  # evaluated by lm-eval in one call (evaluate_model), never batch by batch
    SPLIT = "test"

    def __init__(
        self,
        name: str,
        *,
        include: Sequence[str] = (),
        num_fewshot: int | None = None,
        fewshot_seed: int = FEWSHOT_SEED,
        apply_chat_template: bool = False,
        fewshot_as_multiturn: bool = True,
        system_instruction: str | None = None,
        max_length: int | None = None,
    ) -> None:
        self.lm_eval_name = name
        self.include = tuple(str(p) for p in include)
        self.num_fewshot = num_fewshot
        self.fewshot_seed = fewshot_seed
        self.apply_chat_template = bool(apply_chat_template)
        self.fewshot_as_multiturn = bool(fewshot_as_multiturn) and self.apply_chat_template
        self.system_instruction = system_instruction
        self.max_length = max_length
        lm_eval = _require_lm_eval()
        self.lm_eval_version = str(getattr(lm_eval, "__version__", "?"))
        self.version = f"lm-eval-{self.lm_eval_version}"
        self.name = PREFIX + name
        tm = _resolve(name, self.include)
        self._tm = tm
        try:
            loaded = tm.load([name])
        except Exception as exc:  # noqa: BLE001 - a dataset that is not available offline, a broken YAML
            self._raise_load_error(tm, name, exc)
        tasks = loaded["tasks"]
        if not tasks:
            raise TaskError(f"lm-eval task {name!r} has no subtasks to evaluate")
        self._loaded = loaded
        self.subtasks: list[str] = sorted(tasks)
        self._tasks = [tasks[s] for s in self.subtasks]
        self._configure_tasks()
        self.is_group = len(self.subtasks) > 1 or bool(loaded.get("groups"))
        ids: list[str] = []
        labels: list[int] = []
        self._n_docs: list[int] = []
        for k, (sub, t) in enumerate(zip(self.subtasks, self._tasks)):
            try:
                n = len(t.eval_docs)
            except Exception as exc:  # noqa: BLE001
                self._raise_load_error(tm, sub, exc)
            self._n_docs.append(n)
            ids.extend(f"{sub}:{i}" for i in range(n))
            labels.extend([k] * n)
        self._splits = {self.SPLIT: LmEvalDocuments(np.asarray(ids, dtype=str), np.asarray(labels, dtype=np.int64))}
        self.metrics = self._build_metrics()
        if not self.metrics:
            raise TaskError(
                f"lm-eval task {name!r}: none of its metrics can be compared per document (supported: metrics lm-eval "
                "aggregates with a mean, and word_perplexity / byte_perplexity / bits_per_byte)"
            )
        self.default_metric = self._default_metric()

    # -- loading ---------------------------------------------------------------------------------
    def _raise_load_error(self, tm: Any, name: str, exc: BaseException) -> None:
        from ..evaluate import describe_error

        text = describe_error(exc)
        offline = any(
            w in text.lower()
            for w in (
                "offline",
                "couldn't reach",
                "connection",
                "not found",
                "doesn't exist",
                "no such file",
                "cannot find",
            )
        )
        hint = "; " + _DOWNLOAD_HINT.format(args=_dataset_args(tm, name)) if offline else ""
        raise TaskError(f"lm-eval task {name!r}: its dataset could not be loaded: {text}{hint}") from None

    def _configure_tasks(self) -> None:
        """Few-shot count and seed as ``lm_eval.simple_evaluate`` sets them (re-applied before every evaluation)."""
        for t in self._tasks:
            if self.num_fewshot is not None:
                if t.get_config("num_fewshot") != 0:
                    t.set_config(key="num_fewshot", value=self.num_fewshot)
            elif t.get_config("num_fewshot") is None:
                t.set_config(key="num_fewshot", value=0)
            t.set_fewshot_seed(seed=self.fewshot_seed)

    def _build_metrics(self) -> dict[str, Metric]:
        per_task: list[dict[str, Metric]] = []
        for t in self._tasks:
            flts = [f.name if hasattr(f, "name") else str(f) for f in getattr(t, "_filters", [])] or ["none"]
            hib, agg = t.higher_is_better(), t.aggregation()
            found: dict[str, Metric] = {}
            for metric, fn in agg.items():
                kind = getattr(fn, "__name__", "")
                for k, flt in enumerate(flts):
                    key = _metric_key(metric, flt)
                    m = _metric(key, kind, bool(hib.get(metric, True)), metric in _BINARY)
                    if m is not None:
                        found[key] = m
                        if k == 0 and key != metric:  # the first filter's value under the plain name too
                            found[metric] = _metric(
                                metric, kind, bool(hib.get(metric, True)), metric in _BINARY, key=key
                            )  # type: ignore[assignment]
            per_task.append(found)
        common = set(per_task[0]).intersection(*per_task[1:]) if per_task else set()
        return {k: per_task[0][k] for k in per_task[0] if k in common}

    def _default_metric(self) -> str:
        for pref in ("acc", "exact_match", "acc_norm", "word_perplexity"):
            if pref in self.metrics:
                return pref
        return next(iter(self.metrics))

    # -- the Task interface --------------------------------------------------------------------
    def class_names(self) -> list[str] | None:
        return list(self.subtasks) if self.is_group else None

    def static_outputs(self, split: str) -> dict[str, np.ndarray]:
        docs = self.split(split)
        return {"label": docs.labels} if self.is_group else {}

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        docs = self.split(split)
        settings = dict(
            lm_eval=self.lm_eval_version,
            name=self.lm_eval_name,
            num_fewshot=self.num_fewshot,
            fewshot_seed=self.fewshot_seed,
            seeds=[RANDOM_SEED, NUMPY_SEED, TORCH_SEED],
            chat_template=self.apply_chat_template,
            fewshot_as_multiturn=self.fewshot_as_multiturn,
            system_instruction=self.system_instruction,
            max_length=self.max_length,
        )
        parts: list[Any] = [json.dumps(settings, sort_keys=True)]
        for sub, t in zip(self.subtasks, self._tasks):
            config = json.dumps(_stable(t.dump_config()), sort_keys=True, ensure_ascii=False)
            fewshot = _doc_digest(t.fewshot_docs()) if (t.get_config("num_fewshot") or 0) > 0 else ""
            parts.append([sub, config, _doc_digest(t.eval_docs), fewshot])
        return [docs.ids, parts]

    def prepare(self, split: str, meta: ModelMeta) -> Any:  # pragma: no cover - evaluate_model runs the model
        raise TaskError(
            f"task {self.name!r} is evaluated by lm-eval as a whole (Task.evaluate_model), not batch by batch"
        )

    def check_model(self, meta: ModelMeta) -> None:
        if meta.tokenizer is None:
            raise TaskError(f"task {self.name!r} needs the checkpoint's tokenizer, and the checkpoint has none")

    def evaluate_model(
        self,
        model: Any,
        meta: ModelMeta,
        split: str,
        idx: np.ndarray,
        *,
        device: str,
        dtype: str,
        batch_size: int | str,
    ) -> EvalResult:
        """Run lm-eval on ``idx`` of the documents; per-document metrics as outputs."""
        import copy
        import time

        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        n_docs = self.size(split)
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        # lm-eval may set a pad token on the tokenizer it is given: a copy keeps the checkpoint's as it is
        tokenizer = copy.deepcopy(meta.tokenizer)
        start = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=self.max_length)
        samples = None
        if len(idx) < n_docs:
            samples = {}
            offsets = np.cumsum([0, *self._n_docs])
            for k, sub in enumerate(self.subtasks):
                chosen = idx[(idx >= offsets[k]) & (idx < offsets[k + 1])] - offsets[k]
                samples[sub] = chosen.tolist()
            # lm-eval reads an empty list as "all documents": a subtask with none chosen is left out
            task_dict = self._subset_dict({s for s, v in samples.items() if v})
            samples = {s: v for s, v in samples.items() if v}
        else:
            task_dict = self._loaded
        self._configure_tasks()
        with _seeded_like_simple_evaluate():
            results = evaluate(
                lm=lm, task_dict=task_dict, samples=samples, bootstrap_iters=0, log_samples=True,
                system_instruction=self.system_instruction, apply_chat_template=self.apply_chat_template,
                fewshot_as_multiturn=self.fewshot_as_multiturn,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        return self._collect(results["samples"], idx, seconds)

    def _subset_dict(self, keep: set[str]) -> dict[str, Any]:
        tasks = {s: t for s, t in zip(self.subtasks, self._tasks) if s in keep}
        return {"tasks": tasks, "groups": {}, "group_map": {}}

    def _collect(self, logged: dict[str, list[dict[str, Any]]], idx: np.ndarray, seconds: float) -> EvalResult:
        from ..evaluate import NonFiniteOutputs

        docs = self.split(self.SPLIT)
        pos = {i: k for k, i in enumerate(docs.ids[idx].tolist())}
        n = len(idx)
        columns: dict[str, np.ndarray] = {}
        seen = np.zeros(n, dtype=bool)
        bad: list[str] = []
        for sub in self.subtasks:
            for sample in logged.get(sub, []):
                doc_id = f"{sub}:{int(sample['doc_id'])}"
                row = pos.get(doc_id)
                if row is None:
                    continue
                seen[row] = True
                if not _finite(sample.get("filtered_resps")) and doc_id not in bad:
                    bad.append(doc_id)
                flt = str(sample.get("filter", "none"))
                for metric in sample.get("metrics", []):
                    value = sample.get(metric)
                    key = _metric_key(metric, flt)
                    if (
                        isinstance(value, (list, tuple))
                        and len(value) == 2
                        and all(isinstance(v, (int, float)) for v in value)
                    ):
                        for suffix, v in ((".ll", value[0]), (".w", value[1])):
                            columns.setdefault(key + suffix, np.full(n, np.nan))[row] = float(v)
                    elif isinstance(value, (bool, int, float, np.integer, np.floating)):
                        columns.setdefault(key, np.full(n, np.nan))[row] = float(value)
        if not seen.all():
            missing = docs.ids[idx][~seen][:3].tolist()
            raise TaskError(f"task {self.name!r}: lm-eval logged no result for documents {missing}")
        if bad:
            raise NonFiniteOutputs(
                f"NaN/Inf log-likelihoods on {len(bad)} of {n} documents (e.g. {', '.join(bad[:3])})", bad[:10]
            )
        outputs = {k: v for k, v in columns.items()}
        if self.is_group:
            outputs["label"] = docs.labels[idx]
        return EvalResult(ids=docs.ids[idx], outputs=outputs, seconds=seconds)


def _metric(
    name: str, aggregation: str, higher_is_better: bool, binary: bool, *, key: str | None = None
) -> Metric | None:
    """The plugin's record of one lm-eval metric, read from output ``key`` (default: its name)."""
    key = key or name
    if aggregation == "mean":

        def per_document(o: Any, k: str = key) -> np.ndarray:
            return np.asarray(o[k], dtype=np.float64)

        return PerExampleMetric(
            name,
            higher_is_better,
            binary,
            per_document,
            description=f"lm-eval {name} per document (mean over documents)",
        )
    if aggregation == "weighted_perplexity":  # exp(-sum ll / sum weight): words or bytes

        def parts(o: Any, k: str = key) -> tuple[np.ndarray, np.ndarray]:
            return -np.asarray(o[k + ".ll"], dtype=np.float64), np.asarray(o[k + ".w"], dtype=np.float64)

        def value(o: Any, idx: np.ndarray) -> float:
            num, den = parts(o)
            return float(np.exp(num[idx].sum() / den[idx].sum()))

        return AggregateMetric(name, False, False, value, ratio=parts, transform="exp", description=f"lm-eval {name}")
    if aggregation == "bits_per_byte":  # -sum ll / sum bytes / ln 2

        def bpb_parts(o: Any, k: str = key) -> tuple[np.ndarray, np.ndarray]:
            return -np.asarray(o[k + ".ll"], dtype=np.float64) / math.log(2), np.asarray(o[k + ".w"], dtype=np.float64)

        def bpb(o: Any, idx: np.ndarray) -> float:
            num, den = bpb_parts(o)
            return float(num[idx].sum() / den[idx].sum())

        return AggregateMetric(name, False, False, bpb, ratio=bpb_parts, description=f"lm-eval {name}")
    return None
