"""The Task abstraction: examples with stable ids, how to run a model on them, and metrics.

A task owns its data per named split and knows three things the evaluator needs:
``prepare`` (model-dependent preprocessing such as tokenisation, done once per split and
tokenizer and shared by both models), ``batches`` (slices of the prepared inputs) and
``forward`` (a model call that returns per-example outputs as tensors). Everything that does
not depend on the model (labels, ids, slice columns) is returned by ``static_outputs``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._util import suggest
from ..errors import ConfigError, TaskError
from ..metrics import Metric


@dataclass(frozen=True)
class ModelMeta:
    """What a task may need to know about the checkpoint it prepares inputs for."""

    tokenizer: Any = None
    tokenizer_fingerprint: str = ""
    config: Any = None
    #: hash of the tokenizer's full serialisation (normaliser, pre-tokeniser, vocabulary, special
    #: tokens, padding/truncation settings); None when it cannot be serialised (slow tokenizers),
    #: which keeps its tokenised inputs out of the on-disk cache
    tokenizer_cache_id: str | None = None


#: where a module loaded (or fine-tuned) by the plugin keeps its checkpoint's tokenizer, so that
#: ``forgetting.assert_retains(tuned_model, ...)`` and ``finetune(...)`` results tokenise like the
#: checkpoint did; a user can set it on a module of their own
TOKENIZER_ATTR = "forgetting_tokenizer"


def attach_tokenizer(module: Any, tokenizer: Any) -> None:
    """Let ``module`` carry ``tokenizer`` (nothing happens for None or an object that refuses attributes)."""
    if tokenizer is None or module is None:
        return
    try:
        setattr(module, TOKENIZER_ATTR, tokenizer)
    except (AttributeError, TypeError):
        pass


def tokenizer_of(module: Any) -> Any:
    """The tokenizer a module carries (see :func:`attach_tokenizer`), or None."""
    return getattr(module, TOKENIZER_ATTR, None) if module is not None else None


def hash_arrays(*parts: Any) -> str:
    """sha256 over arrays, strings and nested sequences (stable across runs and processes)."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if obj is None:
            h.update(b"\x00none")
        elif isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
            if arr.dtype.kind in "OU":
                for item in arr.ravel().tolist():
                    feed(str(item))
            else:
                h.update(arr.tobytes())
        elif isinstance(obj, (str, bytes)):
            data = obj.encode() if isinstance(obj, str) else obj
            h.update(b"s%d:" % len(data))
            h.update(data)
        elif isinstance(obj, Mapping):
            h.update(b"map")
            for k in sorted(obj):
                feed(str(k))
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            h.update(b"seq%d" % len(obj))
            for item in obj:
                feed(item)
        else:
            feed(repr(obj))

    for part in parts:
        feed(part)
    return h.hexdigest()


def normalize_ids(ids: Sequence[Any] | np.ndarray | None, n: int, prefix: str) -> np.ndarray:
    if ids is None:
        return np.array([f"{prefix}{i}" for i in range(n)], dtype=str)
    arr = np.asarray([str(i) for i in ids], dtype=str)
    if arr.shape != (n,):
        raise TaskError(f"{len(arr)} ids for {n} examples")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:3].tolist()
        raise TaskError(f"example ids must be unique; duplicated: {dup}")
    return arr


def lookup_column(task_name: str, columns: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    """A slice column of a split, or a ConfigError with "did you mean" and the available columns."""
    if column not in columns:
        raise ConfigError(
            f"task {task_name!r} has no slice column {column!r}{suggest(column, list(columns))}"
            f"; columns: {', '.join(columns) or '(none)'}"
        )
    return columns[column]


class Task:
    """Base class of every task. Subclasses fill ``metrics`` / ``default_metric`` and the hooks."""

    name: str = "<unregistered>"
    version: str = "1"
    metrics: Mapping[str, Metric] = {}
    default_metric: str = ""
    # What the task's outputs mean beyond its metrics (keys of ``EvalResult.outputs``); the
    # session and the evaluator read these declarations, never a key of their own choosing.
    #: the output holding one class id per example (model-independent, 1-D): per-class drops,
    #: class gaps and class budgets group by it; None: no class per example
    label_key: str | None = "label"
    #: the output holding the predicted class id per example, comparable with ``label_key``:
    #: right/wrong per example (flips, negative-flip rate, class drops, precision budgets); None: none
    pred_key: str | None = "pred"
    #: the output of ``forward`` flagging, per example, that the model's outputs are finite: the
    #: evaluator refuses NaN/Inf on it and drops it before the result is stored; None: none
    finite_key: str | None = "finite"

    #: split name -> that split's data, for tasks that keep their splits in memory
    _splits: Mapping[str, Any] = {}

    # -- data ------------------------------------------------------------------------------
    def split_names(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def split(self, split: str) -> Any:
        """The data of one split (the task's own record type, with at least ``ids``)."""
        self.check_split(split)
        return self._splits[split]

    def check_split(self, split: str) -> None:
        names = self.split_names()
        if split not in names:
            raise ConfigError(
                f"task {self.name!r} has no split {split!r}{suggest(split, names)}; splits: {', '.join(names)}"
            )

    def ids(self, split: str) -> np.ndarray:
        return self.split(split).ids

    def size(self, split: str) -> int:
        return len(self.ids(split))

    def class_names(self) -> list[str] | None:
        return None

    def class_labels(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The declared class id per example in ``outputs`` (``label_key``, 1-D), or None."""
        value = outputs.get(self.label_key) if self.label_key is not None else None
        return value if value is not None and np.ndim(value) == 1 else None

    def predictions(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The declared predicted class per example (``pred_key``), when it pairs one to one with
        :meth:`class_labels`; else None."""
        labels = self.class_labels(outputs)
        pred = outputs.get(self.pred_key) if self.pred_key is not None else None
        return pred if labels is not None and pred is not None and np.shape(pred) == np.shape(labels) else None

    def data_fingerprint(self, split: str) -> str:
        """Hash of the split's data and the task version (part of every cache key), memoised per split."""
        memo: dict[str, str] = self.__dict__.setdefault("_fingerprints", {})
        if split not in memo:
            memo[split] = hash_arrays(type(self).__name__, self.version, *self.fingerprint_parts(split))
        return memo[split]

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        """Everything of a split (and the task's settings) that can change a model's outputs on it."""
        raise NotImplementedError

    def static_outputs(self, split: str) -> dict[str, np.ndarray]:
        """Model-independent per-example outputs (labels, slice columns)."""
        return {}

    def slice_column(self, split: str, column: str) -> np.ndarray:
        columns = getattr(self.split(split), "columns", None)
        if columns is None:
            raise ConfigError(f"task {self.name!r} has no slice column {column!r}")
        return lookup_column(self.name, columns, column)

    def check_metric(self, metric: str) -> Metric:
        if metric not in self.metrics:
            raise ConfigError(
                f"task {self.name!r} has no metric {metric!r}{suggest(metric, list(self.metrics))}; "
                f"metrics: {', '.join(self.metrics)}"
            )
        return self.metrics[metric]

    # -- running a model -------------------------------------------------------------------
    #: whether ``prepare`` output may be cached on disk, keyed by ``data_fingerprint(split)``,
    #: ``prepare_key(meta)`` and the tokenizer's serialisation: true only where those three
    #: determine it completely (tokenisation of the split's own texts)
    cache_prepared: bool = False

    def prepare_key(self, meta: ModelMeta) -> str:
        """What the prepared inputs depend on besides the data (e.g. the tokenizer)."""
        return ""

    def check_model(self, meta: ModelMeta) -> None:
        """Refuse, before any batch runs, a model this task cannot score (raise TaskError saying why)."""

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        raise NotImplementedError

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        raise NotImplementedError

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        """Per-example outputs as tensors (first dim = batch), plus optional ``"finite"`` flags."""
        raise NotImplementedError

    def lengths(self, prepared: Any) -> np.ndarray | None:
        """Per-example input lengths of a prepared split (tokens), or None (the default): run in order.

        With lengths, the evaluator runs the requested examples sorted by length (stable) and puts
        the outputs back in the requested order, so that batches carry little padding. Give them
        only where an example's outputs do not depend on the others in its batch (an attention
        mask or causal right padding hides the padding), as for tokenised texts.
        """
        return None

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
    ) -> EvalResult | None:
        """Evaluate ``model`` on ``idx`` of ``split`` in one call, or None (the default) for the batched loop.

        For tasks whose evaluation is done by another engine for the whole model (lm-eval): the
        result holds per-example outputs aligned with ``ids(split)[idx]``; raise
        ``evaluate.NonFiniteOutputs`` for NaN/Inf outputs. Base results are cached like any other.
        """
        return None


@dataclass(frozen=True)
class EvalResult:
    """Per-example outputs of one model on one task split, aligned with ``ids``."""

    ids: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)


# -- splits of per-example fields (text and speech tasks) ------------------------------------


def _build_splits(
    splits: Mapping[str, Any], kind: str
) -> dict[str, tuple[np.ndarray, list[Any], dict[str, np.ndarray]]]:
    """Normalise ``{"name": (items, ids?, columns?)}`` (or bare item lists) into arrays."""
    if not splits:
        raise TaskError(f"{kind} needs at least one split")
    out = {}
    for name, spec in splits.items():
        if isinstance(spec, tuple):
            items, split_ids, cols = (spec + (None, None))[:3]
        else:
            items, split_ids, cols = spec, None, None
        items = list(items)
        columns = {k: np.asarray(v) for k, v in (cols or {}).items()}
        for col, values in columns.items():
            if len(values) != len(items):
                raise TaskError(
                    f"{kind}: split {name!r} column {col!r} has {len(values)} values for {len(items)} examples"
                )
        out[name] = (normalize_ids(split_ids, len(items), f"{name}/"), items, columns)
    return out


@dataclass(frozen=True)
class SplitRecord:
    """One split of a text or speech task: ids, slice columns and its per-example fields by name
    (``texts``; ``prompts`` and ``targets``; ``audio`` and ``transcripts``)."""

    ids: np.ndarray
    columns: dict[str, np.ndarray]
    fields: dict[str, list[Any]]


class _SplitTask(Task):
    """Shared bookkeeping of the text and speech tasks: named splits (``Task._splits``, one
    :class:`SplitRecord` each) with ids, optional slice columns and per-example fields; ids, split
    names and slice columns come from the base class, as for every task."""

    label_key = None
    pred_key = None

    def __init__(self) -> None:
        self._splits: dict[str, SplitRecord] = {}

    def _add_split(self, name: str, ids: np.ndarray, columns: dict[str, np.ndarray], **fields: list[Any]) -> None:
        self._splits[name] = SplitRecord(ids, columns, fields)

    def _field(self, split: str, name: str) -> Any:
        return self.split(split).fields[name]


def _paired_split(
    kind: str, first: Sequence[Any] | None, second: Sequence[Any] | None, ids: Sequence[Any] | None,
    columns: Mapping[str, Sequence[Any]] | None, *, needs: str, counts: tuple[str, str],
) -> dict[str, Any]:  # fmt: skip
    """The ``splits`` of a task given one split as two parallel lists (prompts and targets, audio and
    transcripts): ``{"test": (pairs, ids, columns)}``, or a TaskError naming what is missing or uneven."""
    if first is None or second is None:
        raise TaskError(f"{kind} needs {needs} (or splits={{...}})")
    first, second = list(first), list(second)
    if len(first) != len(second):
        raise TaskError(f"{kind}: {len(first)} {counts[0]} but {len(second)} {counts[1]}")
    return {"test": (list(zip(first, second)), ids, columns)}
