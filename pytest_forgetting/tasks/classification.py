"""Classification tasks over in-memory arrays: images and texts.

Both keep one ``SplitData`` per split (ids, inputs, integer labels, optional slice columns)
and share the label handling, ids, fingerprints and metrics; they differ in how inputs are
prepared for a model and fed to it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import TaskError
from ..metrics import CLASSIFICATION_METRICS
from .base import ModelMeta, Task, normalize_ids


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
        raise TaskError(f"a classification model must return logits of shape (batch, classes), got {tuple(logits.shape)}")
    return {"pred": logits.argmax(dim=1), "finite": torch.isfinite(logits).all(dim=1)}


class ClassificationTask(Task):
    """Shared machinery of array-backed classification tasks."""

    metrics = CLASSIFICATION_METRICS
    default_metric = "accuracy"

    def __init__(self, splits: Mapping[str, SplitData], class_names: list[str]) -> None:
        if not splits:
            raise TaskError("a task needs at least one split")
        self._splits = dict(splits)
        self._class_names = class_names

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
        return (arr.astype(np.float32) / 255.0)
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
) -> tuple[dict[str, SplitData], list[str]]:
    """Validated SplitData per split, and the class names shared by all splits.

    ``splits`` maps a split name to ``(inputs, labels[, ids[, columns]])``; without it the single
    split ``"test"`` is built from the other arguments. ``convert`` turns one split's inputs into
    the task's stored form.
    """
    if splits is None:
        if inputs is None or labels is None:
            raise TaskError(f"a task needs {kind} and labels (or splits={{...}})")
        splits = {"test": (inputs, labels, ids, columns)}
    all_labels = [np.asarray(s[1]) for s in splits.values()]
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
    return built, list(class_names)


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
        built, names = build_splits("images", images, labels, ids, columns, splits, class_names, _as_image_array)
        super().__init__(built, names)

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        import torch

        return torch.from_numpy(self.split(split).inputs)

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        import torch

        contiguous = len(indices) > 0 and indices[0] + len(indices) - 1 == indices[-1] and bool(np.all(np.diff(indices) == 1))
        if contiguous:
            start = int(indices[0])
            for lo in range(0, len(indices), batch_size):
                yield prepared[start + lo : start + min(lo + batch_size, len(indices))]
        else:
            idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            for lo in range(0, len(indices), batch_size):
                yield prepared.index_select(0, idx[lo : lo + batch_size])

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        return classification_outputs(logits_of(model(batch)))


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
        built, names = build_splits("texts", texts, labels, ids, columns, splits, class_names, lambda x: [str(t) for t in x])
        self.max_length = int(max_length)
        super().__init__(built, names)

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

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        out = classification_outputs(logits_of(model(**batch)))
        lookup = class_lookup(model, self._class_names, self.name)
        if lookup is not None:  # the model orders its labels differently: score in the task's class ids
            out["pred"] = lookup.to(out["pred"].device)[out["pred"]]
        return out


def class_lookup(model: Any, class_names: Sequence[str], task_name: str) -> Any:
    """Model label id -> task class id through ``config.id2label``; None when they already agree.

    Placeholder names (LABEL_0, ...) carry no meaning and are taken in order. Real names must all be
    classes of the task: a classifier trained on other labels cannot be scored on this task.
    """
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if all(v == f"LABEL_{k}" for k, v in names.items()):
        return None
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({v for v in names.values() if v not in index})
    if unknown:
        raise TaskError(
            f"task {task_name!r}: the model's labels (config.id2label) {unknown[:5]} are not classes of the task "
            f"{list(class_names)[:10]}; name the task's classes like the model's labels"
        )
    order = [index[names[i]] for i in range(max(names) + 1)] if set(names) == set(range(max(names) + 1)) else None
    if order is None:
        raise TaskError(f"task {task_name!r}: the model's config.id2label does not name label ids 0..{max(names)}")
    if order == list(range(len(order))):
        return None
    import torch

    return torch.tensor(order, dtype=torch.long)


def tokenize_padded(meta: ModelMeta, texts: Sequence[str], max_length: int, task_name: str) -> dict[str, Any]:
    """Tokenise once, right-padded to the split's longest sequence: {"tensors": {...}, "lengths": (N,)}."""
    import torch

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
    width = int(lengths.max(initial=1))
    tensors: dict[str, Any] = {}
    for key in enc.keys():
        fill = pad if key == "input_ids" else 0
        flat = np.full((len(seqs), width), fill, dtype=np.int64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        flat[mask] = np.concatenate([np.asarray(s, dtype=np.int64) for s in enc[key]]) if len(seqs) else []
        tensors[key] = torch.from_numpy(flat)
    if "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.from_numpy((np.arange(width)[None, :] < lengths[:, None]).astype(np.int64))
    return {"tensors": tensors, "lengths": lengths}


def padded_batches(prepared: dict[str, Any], indices: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
    import torch

    lengths = prepared["lengths"]
    idx_all = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    for lo in range(0, len(indices), batch_size):
        chunk = indices[lo : lo + batch_size]
        width = max(int(lengths[chunk].max(initial=1)), 1)
        idx = idx_all[lo : lo + batch_size]
        yield {k: t.index_select(0, idx)[:, :width] for k, t in prepared["tensors"].items()}
