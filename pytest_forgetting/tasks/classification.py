"""Classification tasks over in-memory arrays: images and texts.

Both keep one ``SplitData`` per split (ids, inputs, integer labels, optional slice columns)
and share the label handling, ids, fingerprints and metrics; they differ in how inputs are
prepared for a model and fed to it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checkpoints.compat import placeholder_labels
from ..errors import TaskError
from ..metrics import CLASSIFICATION_METRICS
from ..proba_metrics import PROBA_METRICS
from .base import ModelMeta, Task, normalize_ids
from .batching import pad_encoding, trimmed_batches


@dataclass
class SplitData:
    ids: np.ndarray
    inputs: Any
    labels: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def _encode_labels(labels: Sequence[Any], class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise TaskError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        out = arr.astype(np.int64)
        if len(out) and out.min() < 0:
            raise TaskError("integer labels must be >= 0")
        k = int(out.max()) + 1 if len(out) else 0
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(names) < k:
            raise TaskError(f"label {k - 1} has no class name ({len(names)} class names given)")
        return out, names
    names = list(class_names) if class_names is not None else sorted({str(x) for x in arr.tolist()})
    index = {n: i for i, n in enumerate(names)}
    try:
        return np.array([index[str(x)] for x in arr.tolist()], dtype=np.int64), names
    except KeyError as exc:
        raise TaskError(f"label {exc.args[0]!r} is not among the class names {names}") from None


def logits_of(out: Any) -> Any:
    """Logits from a plain module (a tensor) or a transformers model (an output object)."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def classification_outputs(logits: Any) -> dict[str, Any]:
    import torch

    if logits.ndim != 2:
        raise TaskError(
            f"a classification model must return logits of shape (batch, classes), got {tuple(logits.shape)}"
        )
    return {"pred": logits.argmax(dim=1), "finite": torch.isfinite(logits).all(dim=1)}


def class_probabilities(logits: Any, lookup: Any, n_classes: int) -> Any:
    """Softmax of the logits in float32, as (batch, K) over the task's class ids (K >= n_classes).

    With a ``lookup`` (model output -> task class id) each output's probability is added to its
    class; outputs that are no class of the task (id ``n_classes``) add to none, so such rows sum
    to less than 1. Without one, output k is class k (columns padded to ``n_classes``).
    """
    import torch

    proba = torch.softmax(logits.float(), dim=1)
    if lookup is not None:
        mapped = torch.zeros(proba.shape[0], n_classes + 1, dtype=proba.dtype, device=proba.device)
        mapped.index_add_(1, lookup.to(proba.device), proba)
        return mapped[:, :n_classes]
    if proba.shape[1] < n_classes:
        proba = torch.nn.functional.pad(proba, (0, n_classes - proba.shape[1]))
    return proba


class ClassificationTask(Task):
    """Shared machinery of array-backed classification tasks.

    How a model's outputs are read as the task's classes (:func:`class_lookup`): integer labels
    given without class names index the model's logits (label k is output k); named classes are
    matched by name with the model's ``config.id2label``, and the task may use a subset of them.
    """

    metrics = {**CLASSIFICATION_METRICS, **PROBA_METRICS}
    default_metric = "accuracy"
    #: 2: outputs carry ``proba`` (class probabilities); entries cached before it are not reused
    version = "2"

    def __init__(self, splits: Mapping[str, SplitData], class_names: list[str], *, indexed: bool = False) -> None:
        if not splits:
            raise TaskError("a task needs at least one split")
        self._splits = dict(splits)
        self._class_names = class_names
        #: True when the labels are integers without names: label k is the model's output k
        self.indexed = indexed

    def split(self, split: str) -> SplitData:
        return super().split(split)

    def labels(self, split: str) -> np.ndarray:
        return self.split(split).labels

    def class_names(self) -> list[str]:
        return self._class_names

    def static_outputs(self, split: str) -> dict[str, np.ndarray]:
        return {"label": self.split(split).labels}

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        d = self.split(split)
        return d.ids, d.labels, self._fingerprint_inputs(d.inputs)

    def _fingerprint_inputs(self, inputs: Any) -> Any:
        return inputs

    def check_model(self, meta: ModelMeta) -> None:
        """A classifier's label map (``config.id2label`` / ``num_labels``) must fit the task's labels."""
        config = meta.config
        archs = getattr(config, "architectures", None) or []
        if any(str(a).endswith(_CLASSIFIER_SUFFIXES) for a in archs):  # a head whose outputs are the labels
            class_lookup(
                config,
                self._class_names,
                self.name,
                indexed=self.indexed,
                n_outputs=getattr(config, "num_labels", None),
            )

    def score(self, model: Any, logits: Any) -> dict[str, Any]:
        """Per-example outputs in the task's class ids (a model class outside the task is never right)."""
        out = classification_outputs(logits)
        lookup = class_lookup(
            getattr(model, "config", None),
            self._class_names,
            self.name,
            indexed=self.indexed,
            n_outputs=int(logits.shape[1]) if logits.ndim == 2 else None,
        )
        if lookup is not None:  # the model orders (or names) its labels differently: score in the task's class ids
            out["pred"] = lookup.to(out["pred"].device)[out["pred"]]
        out["proba"] = class_probabilities(logits, lookup, len(self._class_names))
        return out


# -- images ---------------------------------------------------------------------------------


def _as_image_array(images: Any) -> np.ndarray:
    # a tensor can only exist once torch is imported: building a task from arrays (at collection)
    # must not pay torch's import by itself
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    if arr.ndim != 4:
        raise TaskError(f"images must have shape (N, H, W) or (N, C, H, W), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32, copy=False)
    if arr.size and (not np.isfinite(arr).all()):
        raise TaskError("images contain NaN or Inf")
    return np.ascontiguousarray(arr)


def build_splits(
    kind: str,
    inputs: Any,
    labels: Any,
    ids: Any,
    columns: Any,
    splits: Mapping[str, tuple] | None,
    class_names: Sequence[str] | None,
    convert: Any,
) -> tuple[dict[str, SplitData], list[str], bool]:
    """Validated SplitData per split, the class names shared by all splits, and whether the labels
    are bare integers (no names given: label k is the model's output k).

    ``splits`` maps a split name to ``(inputs, labels[, ids[, columns]])``; without it the single
    split ``"test"`` is built from the other arguments. ``convert`` turns one split's inputs into
    the task's stored form.
    """
    if splits is None:
        if inputs is None or labels is None:
            raise TaskError(f"a task needs {kind} and labels (or splits={{...}})")
        splits = {"test": (inputs, labels, ids, columns)}
    all_labels = [np.asarray(s[1]) for s in splits.values()]
    indexed = class_names is None and all(a.dtype.kind in "iu" for a in all_labels)
    if class_names is None and any(a.dtype.kind not in "iu" for a in all_labels):
        class_names = sorted({str(x) for a in all_labels for x in a.tolist()})
    if class_names is None:
        k = max((int(a.max()) + 1 for a in all_labels if len(a)), default=0)
        class_names = [str(i) for i in range(k)]
    built: dict[str, SplitData] = {}
    for name, spec in splits.items():
        x, y, split_ids, cols = (tuple(spec) + (None, None))[:4]
        stored = convert(x)
        enc, _ = _encode_labels(y, class_names)
        if len(enc) != len(stored):
            raise TaskError(f"split {name!r}: {len(stored)} {kind} but {len(enc)} labels")
        built[name] = SplitData(
            normalize_ids(split_ids, len(stored), f"{name}/"),
            stored,
            enc,
            {k: np.asarray(v) for k, v in (cols or {}).items()},
        )
    return built, list(class_names), indexed


class ImageClassificationTask(ClassificationTask):
    """Images (N, H, W) or (N, C, H, W), uint8 or float in [0, 1], with integer or string labels.

    Models receive float32 tensors (N, C, H, W) in [0, 1] (cast to the evaluation dtype).
    """

    def __init__(
        self,
        images: Any = None,
        labels: Sequence[Any] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        splits: Mapping[str, tuple] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        built, names, indexed = build_splits(
            "images", images, labels, ids, columns, splits, class_names, _as_image_array
        )
        super().__init__(built, names, indexed=indexed)

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        import torch

        return torch.from_numpy(self.split(split).inputs)

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        import torch

        contiguous = (
            len(indices) > 0 and indices[0] + len(indices) - 1 == indices[-1] and bool(np.all(np.diff(indices) == 1))
        )
        if contiguous:
            start = int(indices[0])
            for lo in range(0, len(indices), batch_size):
                yield prepared[start + lo : start + min(lo + batch_size, len(indices))]
        else:
            idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            for lo in range(0, len(indices), batch_size):
                yield prepared.index_select(0, idx[lo : lo + batch_size])

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        return self.score(model, logits_of(model(batch)))


# -- texts ----------------------------------------------------------------------------------


class TextClassificationTask(ClassificationTask):
    """Texts with labels; the tokenizer comes from the checkpoint (both models must share it)."""

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        max_length: int = 128,
        class_names: Sequence[str] | None = None,
        splits: Mapping[str, tuple] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        built, names, indexed = build_splits(
            "texts", texts, labels, ids, columns, splits, class_names, lambda x: [str(t) for t in x]
        )
        self.max_length = int(max_length)
        super().__init__(built, names, indexed=indexed)

    cache_prepared = True

    def _fingerprint_inputs(self, inputs: Any) -> Any:
        return [self.max_length, list(inputs)]

    def prepare_key(self, meta: ModelMeta) -> str:
        return meta.tokenizer_fingerprint

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        """Tokenise the whole split once into padded tensors; batches are trimmed to their longest member."""
        return tokenize_padded(meta, self.split(split).inputs, self.max_length, self.name)

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        return padded_batches(prepared, indices, batch_size)

    def lengths(self, prepared: Any) -> np.ndarray:
        return prepared["lengths"]  # masked right padding: length-bucketed batches

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        return self.score(model, logits_of(model(**batch)))


_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")


def config_label_names(config: Any) -> dict[int, str]:
    """The label names of a model's ``config.id2label`` by integer id; {} when it has none (or unreadable ids)."""
    id2label = getattr(config, "id2label", None)
    if not isinstance(id2label, Mapping) or not id2label:
        return {}
    try:
        return {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return {}


def class_lookup(
    config: Any, class_names: Sequence[str], task_name: str, *, indexed: bool = False, n_outputs: int | None = None
) -> Any:
    """Model output index -> task class id, from the model's ``config``; None when they already agree.

    - ``indexed`` (integer labels without names): label k is output k, so every label must be
      below the model's number of outputs.
    - Named classes are matched with ``config.id2label`` by name; the task may use a subset of the
      model's classes, and an output whose label is not a task class maps to an id no example has
      (``len(class_names)``: always wrong); a task with more classes than the model is scored as is
      (the model is wrong on the others). Names that disagree both ways are an error naming the fix.
      Placeholder names (LABEL_0, ...) and models without a label map are read in order.
    """
    n_classes = len(class_names)
    names = config_label_names(config)
    placeholder = placeholder_labels(names)
    if indexed or not names or placeholder:
        if n_outputs is not None and n_classes > n_outputs:
            what = f"integer labels 0..{n_classes - 1}" if indexed else f"{n_classes} classes"
            hint = " or pass class_names=[...] to match them by name" if indexed and names and not placeholder else ""
            raise TaskError(
                f"task {task_name!r} has {what} but the model has {n_outputs} outputs (label k is output k); "
                f"check the label column{hint}"
            )
        return None
    if n_outputs is not None and set(names) != set(range(n_outputs)):
        raise TaskError(
            f"task {task_name!r}: the model's config.id2label names {len(names)} labels but it has {n_outputs} outputs"
        )
    if set(names) != set(range(max(names) + 1)):
        raise TaskError(f"task {task_name!r}: the model's config.id2label does not name label ids 0..{max(names)}")
    model_labels = [names[i] for i in range(len(names))]
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in class_names if c not in set(model_labels)]
    if unknown and not set(model_labels) <= set(index):  # neither side holds the other: the names disagree
        raise TaskError(
            f"task {task_name!r}: classes {_few(unknown, 3)} are not labels of the model, and labels match by name: "
            f"rename them, or pass class_names={_few(model_labels)} if the integer labels are the model's ids"
        )
    order = [index.get(label, n_classes) for label in model_labels]
    if order == list(range(len(order))):
        return None
    import torch

    return torch.tensor(order, dtype=torch.long)


def _few(values: Sequence[Any], n: int = 10) -> str:
    shown = [str(v) for v in list(values)[:n]]
    return repr(shown)[:-1] + (f", ... ({len(values)} in all)]" if len(values) > n else "]")


def tokenize_padded(meta: ModelMeta, texts: Sequence[str], max_length: int, task_name: str) -> dict[str, Any]:
    """Tokenise once, right-padded to the split's longest sequence: {"tensors": {...}, "lengths": (N,)}."""
    if meta.tokenizer is None:
        raise TaskError(f"task {task_name!r} needs a tokenizer, and the checkpoint folder has none")
    tok = meta.tokenizer
    if tok.pad_token_id is None:
        # causal LM tokenizers often have no pad token; any id works because the mask hides it
        pad = tok.eos_token_id if tok.eos_token_id is not None else 0
    else:
        pad = tok.pad_token_id
    enc = tok(list(texts), truncation=True, max_length=max_length, padding=False)
    seqs = enc["input_ids"]
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return {"tensors": pad_encoding(enc, lengths, pad), "lengths": lengths}


def padded_batches(prepared: dict[str, Any], indices: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
    """The model inputs of each batch of a :func:`tokenize_padded` split, cut to the batch's longest text."""
    for _, _, inputs in trimmed_batches(prepared["tensors"], prepared["lengths"], indices, batch_size):
        yield inputs
