"""Training data for ``finetune``: a task name, a Task, a torch Dataset or an ``(x, y)`` pair as batches.

Also the small tensor helpers every strategy's batches go through (device moves, concatenation of
new and replayed batches, logits of a model's output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._util import suggest
from ..errors import ForgettingError
from .spec import FinetuneError


class _Data:
    """A labelled source: ``batch(indices) -> (inputs, labels)`` on the CPU."""

    def __init__(self, name: str, n: int, get: Callable[[np.ndarray], tuple[Any, Any]]) -> None:
        self.name, self.n, self._get = name, n, get

    def batch(self, indices: np.ndarray) -> tuple[Any, Any]:
        return self._get(np.asarray(indices, dtype=np.int64))


def _meta(tokenizer: Any) -> Any:
    from ..tasks.base import ModelMeta

    return ModelMeta(tokenizer=tokenizer)


def as_data(
    source: Any, *, split: str = "train", tokenizer: Any = None, what: str = "train", config: Any = None
) -> _Data:
    """A training source from a task name, a Task, a torch Dataset of (x, y) or an (x, y) pair.

    A classification task's labels come out as the model's output ids (``config.id2label`` matched by
    name, as when it is evaluated), so a model that orders its labels differently trains on the right logits.
    """
    import torch

    from ..registry import REGISTRY
    from ..tasks.base import Task

    if isinstance(source, str):
        try:
            source = REGISTRY.get(source)
        except ForgettingError as exc:
            raise FinetuneError(f"{what}={source!r}: {exc}") from None
    if isinstance(source, Task):
        return _task_data(source, split, tokenizer, what, config)
    if isinstance(source, tuple) and len(source) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in source)
        if len(x) != len(y):
            raise FinetuneError(f"{what}: {len(x)} inputs but {len(y)} labels")
        source = torch.utils.data.TensorDataset(x, y.long())
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        dataset = source
        from torch.utils.data import default_collate

        def get(idx: np.ndarray) -> tuple[Any, Any]:
            items = [dataset[int(i)] for i in idx]
            if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items[:1]):
                raise FinetuneError(f"{what}: a dataset must yield (input, label) pairs, got {type(items[0]).__name__}")
            x, y = default_collate(items)
            return x, torch.as_tensor(y).long()

        return _Data(f"<{type(dataset).__name__}>", len(dataset), get)
    raise FinetuneError(
        f"{what}={source!r}: expected a registered task name, a Task, a torch Dataset of (input, label) "
        "or an (x, y) pair"
    )


def _model_label_ids(task: Any, config: Any, what: str) -> Any:
    """Task class id -> the model's output id (a tensor), or None when they are the same ids."""
    from ..tasks.classification import ClassificationTask, class_lookup
    from ..tasks.embedding import EmbeddingProbeTask

    if config is None or not isinstance(task, ClassificationTask) or isinstance(task, EmbeddingProbeTask):
        return None
    names = task.class_names()
    try:
        lookup = class_lookup(config, names, task.name, indexed=task.indexed)
    except ForgettingError as exc:
        raise FinetuneError(f"{what}: {exc}") from None
    if lookup is None:
        return None
    import torch

    model_id = {int(t): m for m, t in enumerate(lookup.tolist()) if int(t) < len(names)}
    missing = [names[t] for t in range(len(names)) if t not in model_id]
    if missing:
        raise FinetuneError(
            f"{what}: task {task.name!r} has classes {missing[:3]} that are not labels of the model (config.id2label); "
            "it cannot be trained on them: train on a task with the model's labels"
        )
    return torch.tensor([model_id[t] for t in range(len(names))], dtype=torch.long)


def _task_data(task: Any, split: str, tokenizer: Any, what: str, config: Any = None) -> _Data:
    import torch

    if not hasattr(task, "labels") or not hasattr(task, "split"):
        raise FinetuneError(
            f"{what}: task {task.name!r} is a {type(task).__name__}; finetune trains classification tasks"
        )
    if split not in task.split_names():
        raise FinetuneError(
            f"{what}: task {task.name!r} has no split {split!r}{suggest(split, task.split_names())} "
            f"(splits: {', '.join(task.split_names())}); pass split=... to train on another one, "
            "but never on the split your retains/improves checks gate on"
        )
    try:
        prepared = task.prepare(split, _meta(tokenizer))
    except ForgettingError as exc:
        raise FinetuneError(f"{what}: {exc}; pass tokenizer=... for a model without a checkpoint folder") from None
    labels = torch.from_numpy(task.labels(split))
    to_model = _model_label_ids(task, config, what)
    if to_model is not None:
        labels = to_model[labels]

    def get(idx: np.ndarray) -> tuple[Any, Any]:
        inputs = next(iter(task.batches(prepared, idx, max(len(idx), 1))))
        return inputs, labels[torch.from_numpy(idx)]

    return _Data(f"{task.name}/{split}", task.size(split), get)


def _to(batch: Any, device: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            batch = batch.float()
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _concat(a: Any, b: Any) -> Any:
    """Concatenate two input batches (dicts of token tensors are right-padded to a common width)."""
    import torch

    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, Mapping):
        out = {}
        for key in a:
            x, y = a[key], b[key]
            if x.ndim == 2 and x.shape[1] != y.shape[1]:
                width = max(x.shape[1], y.shape[1])
                x = torch.nn.functional.pad(x, (0, width - x.shape[1]))
                y = torch.nn.functional.pad(y, (0, width - y.shape[1]))
            out[key] = torch.cat([x, y])
        return out
    raise FinetuneError(f"cannot mix batches of type {type(a).__name__} (replay needs tensors or dicts of tensors)")


def _logits(model: Any, inputs: Any) -> Any:
    from ..tasks.classification import logits_of

    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    logits = logits_of(out)
    if logits.ndim != 2:
        raise FinetuneError(f"the model must return logits of shape (batch, classes), got {tuple(logits.shape)}")
    return logits
