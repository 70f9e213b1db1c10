"""The fine-tuning runner behind the ``finetune`` fixture: short, deterministic, forgetting-aware.

``finetune(model, train, strategy=..., ...)`` fine-tunes a *copy* of ``model`` on a
classification task (a registered task name, a Task object, a torch Dataset of ``(x, y)``
or an ``(x, y)`` pair) and returns the tuned ``nn.Module``. The same arguments give
bit-identical weights on CPU: data order, dropout and adapter initialisation come from
``seed`` inside a forked RNG, deterministic kernels are on for the call, and the caller's
global state (RNG, determinism flags) is restored afterwards.

Strategies (each a known remedy against catastrophic forgetting, plus the naive baseline):

- ``full``: every parameter trains.
- ``freeze``: only the last ``train_last`` blocks train (default 1, the head), or everything
  but the parameters matching the ``freeze=[...]`` name patterns (fnmatch).
- ``gradual_unfreeze``: the head first, then ``blocks_per_epoch`` deeper blocks per epoch.
- ``lora``: low-rank adapters through ``peft`` (``r``, ``alpha``, ``dropout``,
  ``target_modules``, ``modules_to_save``); the returned module is a ``PeftModel`` whose base
  weights equal the starting weights.
- ``adalora``: adaptive low-rank adapters (AdaLoRA, Zhang et al. 2023) through ``peft``: every
  target module starts at rank ``init_r`` and the rank budget is pruned to an average of
  ``target_r`` by SVD-importance between step ``tinit`` and ``total - tfinal`` (every ``delta_t``
  steps; defaults 10 % and 20 % of the planned steps), with ``beta1`` / ``beta2`` smoothing the
  importance and ``orth_reg_weight`` the orthogonality penalty on the singular vectors; ``alpha``,
  ``dropout``, ``target_modules`` and ``modules_to_save`` as for ``lora``. Saved as a PEFT adapter
  folder, like ``lora``.
- ``l2sp``: ``penalty / 2 * sum ||w - w_base||^2`` added to the loss.
- ``ewc``: the same with a diagonal Fisher estimated on ``retain`` (a task whose
  ``retain_split``, default "train", is used), normalised to mean 1 so that ``penalty`` has the
  scale of L2-SP's.
- ``replay``: a ``fraction`` of every batch is drawn from ``retain``.
- ``wise_ft``: a ``full`` fine-tune, then the weights ``(1 - alpha) * base + alpha * tuned``;
  ``alpha="auto"`` picks the largest alpha of the grid ``alphas`` whose model still meets every
  check in ``keep=[{"task": ..., "max_drop": ...}, {"task": ..., "min_gain": ...}]`` (decided
  by the forgetting session's statistics) and attaches the curve as ``model.wise_ft_curve``.

Blocks are groups of parameters by depth: the module path up to its first numeric part
(``encoder.layer.3``, the ``3`` of an ``nn.Sequential``), else its first two parts
(``bert.embeddings``, ``classifier``), in definition order; the last block is the head.
``layer_lr_decay=d`` gives block ``k`` from the top the learning rate ``lr * d**k``
(discriminative learning rates) with any strategy.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pytest

from .errors import ConfigError, ForgettingError
from .registry import suggest
from .tasks.base import attach_tokenizer, tokenizer_of

if TYPE_CHECKING:
    import torch
    from torch import nn

STRATEGIES = ("full", "freeze", "gradual_unfreeze", "lora", "adalora", "l2sp", "ewc", "replay", "wise_ft")
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_ALPHAS = tuple(round(i / 10, 2) for i in range(11))

_REQUIRED = object()

#: options of each strategy and their defaults (``_REQUIRED``: must be given)
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "freeze": {"train_last": None, "freeze": None},
    "gradual_unfreeze": {"blocks_per_epoch": 1},
    "lora": {"r": 8, "alpha": None, "dropout": 0.0, "target_modules": None, "modules_to_save": None},
    "adalora": {"init_r": 12, "target_r": 4, "alpha": None, "dropout": 0.0, "target_modules": None, "modules_to_save": None,
                "tinit": None, "tfinal": None, "delta_t": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5},
    "l2sp": {"penalty": 1.0},
    "ewc": {"retain": _REQUIRED, "penalty": 1.0, "fisher_examples": 256, "retain_split": "train"},
    "replay": {"retain": _REQUIRED, "fraction": 0.25, "retain_split": "train"},
    "wise_ft": {"alpha": 0.5, "keep": (), "alphas": DEFAULT_ALPHAS, "tuned": None},
}


class FinetuneError(ConfigError):
    """A ``finetune`` call that cannot run as asked (bad argument, unsupported task or model)."""


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the held-out accuracy stops improving, or when a retained task drops too far.

    ``val_fraction`` of the training split is held out (seeded) and never trained on; it is
    scored every epoch (or every ``every`` steps). After ``patience`` checks without a gain of
    more than ``min_delta`` training stops. With ``retain``, the accuracy on up to
    ``retain_examples`` examples of the retained task's ``retain_split`` is watched as well:
    training stops as soon as it falls more than ``max_drop`` below the starting model's, and
    the best checkpoint is chosen among those within the budget. The best weights are restored
    (``restore_best``).
    """

    patience: int = 2
    val_fraction: float = 0.1
    every: int | None = None
    min_delta: float = 0.0
    retain: Any = None
    retain_split: str = "train"
    max_drop: float = 0.02
    retain_examples: int = 500
    restore_best: bool = True

    @classmethod
    def coerce(cls, value: Any) -> "EarlyStopping | None":
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(patience=value)
        if isinstance(value, Mapping):
            names = [f for f in cls.__dataclass_fields__]
            for key in value:
                if key not in names:
                    raise FinetuneError(f"early_stopping: unknown key {key!r}{suggest(key, names)}; keys: {', '.join(names)}")
            return cls(**value)
        raise FinetuneError(f"early_stopping={value!r}: expected True, a patience (int), a dict or EarlyStopping(...)")


@dataclass
class FinetuneInfo:
    """What happened during a call; attached to the returned module as ``finetune_info``."""

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    planned_steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    stopped: str = ""
    losses: list[float] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    trainable_blocks_per_epoch: list[int] = field(default_factory=list)
    new_examples: int = 0
    replayed_examples: int = 0
    best_step: int | None = None
    fisher_mean: float | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    wise_ft_alpha: float | None = None
    wise_ft_curve: list[dict[str, Any]] = field(default_factory=list)
    saved_to: str | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- data ------------------------------------------------------------------------------------


class _Data:
    """A labelled source: ``batch(indices) -> (inputs, labels)`` on the CPU."""

    def __init__(self, name: str, n: int, get: Callable[[np.ndarray], tuple[Any, Any]]) -> None:
        self.name, self.n, self._get = name, n, get

    def batch(self, indices: np.ndarray) -> tuple[Any, Any]:
        return self._get(np.asarray(indices, dtype=np.int64))


def _meta(tokenizer: Any) -> Any:
    from .tasks.base import ModelMeta

    return ModelMeta(tokenizer=tokenizer)


def as_data(source: Any, *, split: str = "train", tokenizer: Any = None, what: str = "train", config: Any = None) -> _Data:
    """A training source from a task name, a Task, a torch Dataset of (x, y) or an (x, y) pair.

    A classification task's labels come out as the model's output ids (``config.id2label`` matched by
    name, as when it is evaluated), so a model that orders its labels differently trains on the right logits.
    """
    import torch

    from .registry import REGISTRY
    from .tasks.base import Task

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
        f"{what}={source!r}: expected a registered task name, a Task, a torch Dataset of (input, label) or an (x, y) pair"
    )


def _model_label_ids(task: Any, config: Any, what: str) -> Any:
    """Task class id -> the model's output id (a tensor), or None when they are the same ids."""
    from .tasks.classification import ClassificationTask, class_lookup
    from .tasks.embedding import EmbeddingProbeTask

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
        raise FinetuneError(f"{what}: task {task.name!r} is a {type(task).__name__}; finetune trains classification tasks")
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
    from .tasks.classification import logits_of

    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    logits = logits_of(out)
    if logits.ndim != 2:
        raise FinetuneError(f"the model must return logits of shape (batch, classes), got {tuple(logits.shape)}")
    return logits


# -- blocks, freezing, modes -------------------------------------------------------------------


def block_of(module_path: str) -> str:
    """The depth block of a module path (see the module docstring)."""
    parts = module_path.split(".") if module_path else []
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def parameter_blocks(model: "nn.Module") -> list[tuple[str, list[str]]]:
    """``[(block, [parameter names])]`` from the input side to the head, in definition order."""
    blocks: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        blocks.setdefault(block_of(name.rpartition(".")[0]), []).append(name)
    return list(blocks.items())


def _set_trainable(model: "nn.Module", names: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


def _train_mode(model: "nn.Module") -> None:
    """Train mode, except modules whose own parameters are all frozen (their buffers stay put)."""
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def _last_blocks(blocks: list[tuple[str, list[str]]], k: int) -> set[str]:
    return {n for _, names in blocks[max(len(blocks) - k, 0):] for n in names}


def _freeze_names(model: "nn.Module", blocks: list[tuple[str, list[str]]], opts: dict[str, Any]) -> set[str]:
    """Names of the parameters that train under ``freeze``."""
    patterns, last = opts.get("freeze"), opts.get("train_last")
    if patterns is not None and last is not None:
        raise FinetuneError("strategy 'freeze': give train_last=k or freeze=[patterns], not both")
    all_names = [n for n, _ in model.named_parameters()]
    if patterns is not None:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        frozen = {n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
        if unmatched:
            raise FinetuneError(
                f"strategy 'freeze': pattern(s) {unmatched} match no parameter; names look like {', '.join(all_names[:4])}"
            )
        trainable = set(all_names) - frozen
    else:
        k = 1 if last is None else _int_option("freeze", "train_last", last, 1)
        trainable = _last_blocks(blocks, k)
    if not trainable:
        raise FinetuneError("strategy 'freeze': every parameter is frozen; nothing would train")
    return trainable


def _int_option(strategy: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise FinetuneError(f"strategy {strategy!r}: {key}={value!r} must be an integer >= {low}")
    return int(value)


def _float_option(strategy: str, key: str, value: Any, low: float, high: float | None = None, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]" if high is not None else f"{'>' if open_low else '>='} {low:g}"
        raise FinetuneError(f"strategy {strategy!r}: {key}={value!r} must be a number {bound}")
    return value


# -- LoRA ---------------------------------------------------------------------------------------


def _lora(model: "nn.Module", opts: dict[str, Any]) -> Any:
    """Wrap ``model`` in a PeftModel with LoRA adapters (the model's own weights are frozen)."""
    import torch

    try:
        import peft
    except ImportError:
        raise FinetuneError("strategy 'lora' needs the peft package: pip install peft (or pytest-forgetting[lora])") from None
    r = _int_option("lora", "r", opts["r"], 1)
    alpha = r if opts["alpha"] is None else _float_option("lora", "alpha", opts["alpha"], 0.0, open_low=True)
    dropout = _float_option("lora", "dropout", opts["dropout"], 0.0, 1.0)
    targets = opts["target_modules"]
    task_type = None
    config = getattr(model, "config", None)
    if targets is None:
        if config is not None and getattr(config, "model_type", None):
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

            targets = None if config.model_type in known else "all-linear"
            if type(model).__name__.endswith("ForSequenceClassification"):
                task_type = "SEQ_CLS"  # peft then trains the classification head in full
        else:
            kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
            names = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
            if not names:
                raise FinetuneError("strategy 'lora': the model has no Linear/Conv layers; pass target_modules=[...]")
            targets = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    lora_config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        modules_to_save=opts["modules_to_save"], task_type=task_type,
    )  # fmt: skip
    try:
        return peft.get_peft_model(model, lora_config)
    except (ValueError, TypeError, KeyError) as exc:
        raise FinetuneError(f"strategy 'lora': peft could not add adapters ({exc}); pass target_modules=[...]") from None


def _adalora(model: "nn.Module", opts: dict[str, Any], total_steps: int) -> Any:
    """Wrap ``model`` in a PeftModel with AdaLoRA adapters; the rank schedule spans ``total_steps``."""
    import torch

    try:
        import peft
    except ImportError:
        raise FinetuneError("strategy 'adalora' needs the peft package: pip install peft (or pytest-forgetting[lora])") from None
    init_r = _int_option("adalora", "init_r", opts["init_r"], 1)
    target_r = _int_option("adalora", "target_r", opts["target_r"], 1)
    if target_r > init_r:
        raise FinetuneError(f"strategy 'adalora': target_r={target_r} must not exceed init_r={init_r} (the budget only shrinks)")
    alpha = init_r if opts["alpha"] is None else _float_option("adalora", "alpha", opts["alpha"], 0.0, open_low=True)
    dropout = _float_option("adalora", "dropout", opts["dropout"], 0.0, 1.0)
    total = max(1, int(total_steps))
    tinit = int(0.1 * total) if opts["tinit"] is None else _int_option("adalora", "tinit", opts["tinit"], 0)
    tfinal = int(0.2 * total) if opts["tfinal"] is None else _int_option("adalora", "tfinal", opts["tfinal"], 0)
    if tinit >= total - tfinal:
        raise FinetuneError(
            f"strategy 'adalora': tinit={tinit} + tfinal={tfinal} leave no budgeting phase in the {total} planned steps; "
            "lower them or train longer"
        )
    targets = opts["target_modules"]
    task_type = None
    config = getattr(model, "config", None)
    if targets is None:
        if config is not None and getattr(config, "model_type", None):
            from peft.utils import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING as known

            if config.model_type not in known:
                raise FinetuneError(f"strategy 'adalora': no default target modules for model type {config.model_type!r}; pass target_modules=[...]")
            if type(model).__name__.endswith("ForSequenceClassification"):
                task_type = "SEQ_CLS"  # peft then trains the classification head in full
        else:  # AdaLoRA adapts Linear layers (not convolutions)
            names = [n for n, m in model.named_modules() if n and isinstance(m, torch.nn.Linear)]
            if not names:
                raise FinetuneError("strategy 'adalora': the model has no Linear layers; pass target_modules=[...]")
            targets = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    try:
        adalora_config = peft.AdaLoraConfig(
            init_r=init_r, target_r=target_r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
            modules_to_save=opts["modules_to_save"], task_type=task_type, tinit=tinit, tfinal=tfinal,
            deltaT=_int_option("adalora", "delta_t", opts["delta_t"], 1), beta1=_float_option("adalora", "beta1", opts["beta1"], 0.0, 1.0),
            beta2=_float_option("adalora", "beta2", opts["beta2"], 0.0, 1.0),
            orth_reg_weight=_float_option("adalora", "orth_reg_weight", opts["orth_reg_weight"], 0.0), total_step=total,
        )  # fmt: skip
        return peft.get_peft_model(model, adalora_config)
    except (ValueError, TypeError, KeyError) as exc:
        raise FinetuneError(f"strategy 'adalora': peft could not add adapters ({exc}); pass target_modules=[...]") from None


def _orthogonality(model: Any) -> Any:
    """AdaLoRA's regulariser: mean over adapters of ||P P^T - I||_F for the left (A) and right (B)
    singular-vector matrices, which keeps the factorisation an SVD (Zhang et al. 2023, eq. 4)."""
    import torch

    terms = []
    for name, p in model.named_parameters():
        if not p.requires_grad or not (".lora_A." in name or ".lora_B." in name):
            continue
        cov = p @ p.T if ".lora_A." in name else p.T @ p
        eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
        terms.append(torch.linalg.matrix_norm(cov - eye))
    return torch.stack(terms).mean() if terms else None


def is_peft(model: Any) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


# -- penalties ----------------------------------------------------------------------------------


def fisher_diagonal(model: "nn.Module", data: _Data, indices: np.ndarray, device: Any = None) -> dict[str, "torch.Tensor"]:
    """Diagonal empirical Fisher: the mean over examples of the squared gradient of -log p(y|x).

    Per-example gradients (one backward pass per example), with the model in eval mode.
    """
    import torch

    device = device if device is not None else next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    for i in indices:
        x, y = data.batch(np.array([i]))
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(_logits(model, _to(x, device)), y.to(device))
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for n in fisher:
        fisher[n] /= max(len(indices), 1)
    return fisher


class _Anchor:
    """``penalty / 2 * sum(weight * (w - w0)^2)`` over the trainable parameters (L2-SP, EWC)."""

    def __init__(self, model: "nn.Module", penalty: float, weights: dict[str, "torch.Tensor"] | None = None) -> None:
        self.penalty = penalty
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.weights = weights

    def __call__(self, model: "nn.Module") -> "torch.Tensor":
        total = None
        for n, p in model.named_parameters():
            if not p.requires_grad or n not in self.anchor:
                continue
            sq = (p - self.anchor[n]) ** 2
            if self.weights is not None:
                sq = sq * self.weights[n]
            term = sq.sum()
            total = term if total is None else total + term
        if total is None:
            import torch

            return torch.zeros(())
        return 0.5 * self.penalty * total


# -- WiSE-FT ------------------------------------------------------------------------------------


def interpolate(base: "nn.Module", tuned: "nn.Module", alpha: float) -> "nn.Module":
    """A new module with the weights ``(1 - alpha) * base + alpha * tuned`` (alpha 0 / 1 exactly)."""
    import torch

    out = copy.deepcopy(tuned)
    base_state = base.state_dict()
    with torch.no_grad():
        for name, t in out.state_dict().items():
            if name not in base_state:
                raise FinetuneError(f"wise_ft: the tuned model has a weight {name!r} the base lacks; they must share an architecture")
            b = base_state[name]
            if not t.is_floating_point():
                continue
            if alpha == 0.0:
                t.copy_(b)
            elif alpha != 1.0:
                t.copy_(torch.lerp(b.to(t.dtype), t, float(alpha)))
    return out


def _parse_keep(keep: Any) -> list[Any]:
    from .checks import parse_check

    if isinstance(keep, Mapping):
        keep = [keep]
    checks = []
    for i, item in enumerate(keep or ()):
        where = f"wise_ft keep[{i}]"
        if not isinstance(item, Mapping):
            raise FinetuneError(f"{where}: expected a dict like {{'task': 'mnist', 'max_drop': 0.02}}, got {item!r}")
        kind = "improves" if "min_gain" in item else "retains"
        checks.append(parse_check(kind, dict(item), where))
    return checks


def _wise_ft_search(
    start: "nn.Module", tuned: "nn.Module", *, keep: list[Any], alphas: Sequence[float], session: Any, base_slot: Any,
    track: str | None, progress: Callable[[str], None] | None, dtype: Any,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every alpha of the grid against the keep checks; the largest all-PASS alpha wins."""
    from .checks import bind_task, parse_check

    bound = [bind_task(c, "wise_ft keep", session.task(c.task)) for c in keep]
    if track is not None and not any(c.task == track for c in bound):
        bound_track = bind_task(parse_check("retains", {"task": track, "max_drop": 1.0}, "wise_ft"), "wise_ft", session.task(track))
    else:
        bound_track = None
    curve: list[dict[str, Any]] = []
    for alpha in sorted(alphas):
        slot = session.module_slot("tuned", interpolate(start, tuned, alpha).to(dtype=dtype))
        point: dict[str, Any] = {"alpha": alpha, "checks": []}
        ok = True
        for check in bound:
            row = session.run_check(check, test="<finetune wise_ft>", base=base_slot, tuned=slot).row
            point["checks"].append({k: row.get(k) for k in ("task", "kind", "metric", "base", "tuned", "drop", "ci_low", "ci_high", "margin", "verdict")})
            ok = ok and row["verdict"] == "pass"
        if bound_track is not None:
            row = session.run_check(bound_track, test="<finetune wise_ft>", base=base_slot, tuned=slot).row
            point["gain"] = {"task": track, "base": row["base"], "tuned": row["tuned"], "gain": None if row["drop"] is None else -row["drop"]}
        point["ok"] = ok
        curve.append(point)
    passing = [p["alpha"] for p in curve if p["ok"]]
    chosen = max(passing) if passing else 0.0
    if progress is not None:
        for line in format_curve(curve, chosen):
            progress(line)
    return chosen, curve


def format_curve(curve: list[dict[str, Any]], chosen: float | None = None) -> list[str]:
    """The WiSE-FT curve as text lines: alpha, each check's drop [CI] and verdict, the new-task gain."""
    lines = ["wise_ft: largest alpha whose model meets every keep check" + (f" -> alpha={chosen:g}" if chosen is not None else "")]
    for p in curve:
        parts = []
        for c in p["checks"]:
            if c["drop"] is None:
                parts.append(f"{c['task']} {c['verdict'].upper()}")
                continue
            sign = "drop" if c["kind"] == "retains" else "gain"
            value = c["drop"] if c["kind"] == "retains" else -c["drop"]
            lo, hi = (c["ci_low"], c["ci_high"]) if c["kind"] == "retains" else (-c["ci_high"], -c["ci_low"])
            parts.append(f"{c['task']} {sign} {100 * value:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] {c['verdict'].upper()}")
        if "gain" in p and p["gain"]["gain"] is not None:
            parts.append(f"{p['gain']['task']} gain {100 * p['gain']['gain']:+.1f} pp")
        mark = "*" if chosen is not None and p["alpha"] == chosen else " "
        lines.append(f" {mark} alpha={p['alpha']:.2f}  " + "; ".join(parts))
    return lines


# -- saving ---------------------------------------------------------------------------------------


def save_model(model: "nn.Module", path: str | os.PathLike[str], tokenizer: Any = None) -> str:
    """Write what ``--tuned-ckpt`` loads: a PEFT adapter folder, a ``.safetensors`` file, or an HF folder."""
    from safetensors.torch import save_file

    path = Path(path)
    if is_peft(model):
        if path.suffix == ".safetensors":
            raise FinetuneError(f"save_to={str(path)!r}: a LoRA model is saved as a PEFT adapter folder; give a folder path")
        model.save_pretrained(str(path))
        return str(path)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        # clones: tied weights share storage, which safetensors refuses; both names stay for strict loading
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
        return str(path)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(path))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(path))
        return str(path)
    raise FinetuneError(
        f"save_to={str(path)!r}: a plain nn.Module is saved as a single .safetensors file (loaded with --model-factory); "
        "end the path with .safetensors"
    )


# -- determinism, progress -----------------------------------------------------------------------


@contextlib.contextmanager
def deterministic(seed: int, device: "torch.device") -> Iterator[None]:
    """Seeded RNG (forked: the caller's is untouched) and deterministic kernels for one call."""
    import torch

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn
    cudnn_state = (cudnn.deterministic, cudnn.benchmark)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            with torch.enable_grad():
                yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn)
            cudnn.deterministic, cudnn.benchmark = cudnn_state


class _Progress:
    """Progress lines at most every ``every_steps`` steps (or every ``every_s`` seconds) and a final one."""

    def __init__(self, write: Callable[[str], None] | None, label: str, every_steps: int | None, every_s: float = 5.0) -> None:
        self.write, self.label, self.every_steps, self.every_s = write, label, every_steps, every_s
        self.start = self.last = time.perf_counter()
        self.printed = False

    def step(self, step: int, total: int, epoch: int, loss: float, lr: float) -> None:
        if self.write is None:
            return
        now = time.perf_counter()
        due = (step % self.every_steps == 0) if self.every_steps else (now - self.last >= self.every_s)
        if due:
            self.last, self.printed = now, True
            self.write(f"{self.label} step {step}/{total} epoch {epoch + 1} loss {loss:.4f} lr {lr:.2e} ({now - self.start:.1f}s)")

    def done(self, info: FinetuneInfo) -> None:
        if self.write is not None and self.printed:
            loss = f", final loss {info.final_loss:.4f}" if info.final_loss is not None else ""
            self.write(f"{self.label} done: {info.steps} steps in {info.seconds:.1f}s ({info.stopped}){loss}")


# -- the runner ---------------------------------------------------------------------------------


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _check_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    if strategy not in STRATEGIES:
        raise FinetuneError(f"unknown strategy {strategy!r}{suggest(str(strategy), STRATEGIES)}; strategies: {', '.join(STRATEGIES)}")
    spec = STRATEGY_OPTIONS[strategy]
    for key in options:
        if key not in spec:
            allowed = ", ".join(spec) or "(none)"
            raise FinetuneError(f"strategy {strategy!r} has no option {key!r}{suggest(key, list(spec))}; its options: {allowed}")
    opts = {**spec, **options}
    missing = [k for k, v in opts.items() if v is _REQUIRED]
    if missing:
        raise FinetuneError(f"strategy {strategy!r} needs {', '.join(f'{k}=' for k in missing)} (e.g. retain='mnist')")
    return opts


def _check_common(lr: Any, epochs: Any, max_steps: Any, batch_size: Any, weight_decay: Any, lr_schedule: Any, warmup: Any,
                  optimizer: Any, time_budget_s: Any, layer_lr_decay: Any, max_grad_norm: Any) -> None:
    def bad(msg: str) -> None:
        raise FinetuneError(msg)

    def number(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(x)

    def integer(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, (int, np.integer))

    if not number(lr) or lr <= 0:
        bad(f"lr={lr!r} must be a positive number")
    if epochs is not None and (not integer(epochs) or epochs < 1):
        bad(f"epochs={epochs!r} must be an integer >= 1")
    if max_steps is not None and (not integer(max_steps) or max_steps < 1):
        bad(f"max_steps={max_steps!r} must be an integer >= 1")
    if not integer(batch_size) or batch_size < 1:
        bad(f"batch_size={batch_size!r} must be an integer >= 1")
    if not number(weight_decay) or weight_decay < 0:
        bad(f"weight_decay={weight_decay!r} must be a number >= 0")
    if lr_schedule not in SCHEDULES:
        bad(f"lr_schedule={lr_schedule!r}{suggest(str(lr_schedule), SCHEDULES)}; choose one of {', '.join(SCHEDULES)}")
    if optimizer not in OPTIMIZERS:
        bad(f"optimizer={optimizer!r}{suggest(str(optimizer), OPTIMIZERS)}; choose one of {', '.join(OPTIMIZERS)}")
    if not number(warmup) or warmup < 0 or (not integer(warmup) and warmup >= 1):
        bad(f"warmup={warmup!r} must be a number of steps (int >= 0) or a fraction of the steps in [0, 1)")
    if time_budget_s is not None and (not number(time_budget_s) or time_budget_s <= 0):
        bad(f"time_budget_s={time_budget_s!r} must be a positive number of seconds")
    if layer_lr_decay is not None and (not number(layer_lr_decay) or not 0 < layer_lr_decay <= 1):
        bad(f"layer_lr_decay={layer_lr_decay!r} must be in (0, 1] (each block down from the head gets lr * decay**depth)")
    if max_grad_norm is not None and (not number(max_grad_norm) or max_grad_norm <= 0):
        bad(f"max_grad_norm={max_grad_norm!r} must be a positive number")


def finetune(
    model: "nn.Module",
    train: Any,
    *,
    strategy: str = "full",
    lr: float = 1e-3,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    lr_schedule: str = "constant",
    warmup: int | float = 0,
    max_grad_norm: float | None = None,
    layer_lr_decay: float | None = None,
    early_stopping: Any = None,
    time_budget_s: float | None = None,
    save_to: str | os.PathLike[str] | None = None,
    split: str = "train",
    device: Any = None,
    tokenizer: Any = None,
    session: Any = None,
    progress: Callable[[str], None] | None = None,
    log_every: int | None = None,
    **options: Any,
) -> "nn.Module":
    """Fine-tune a copy of ``model`` on ``train`` and return it (``model`` itself is never changed).

    ``epochs`` passes over the training split (default 1), or ``max_steps`` optimiser steps, or
    whichever ends first when both are given; ``time_budget_s`` stops earlier (and then the result
    depends on the machine's speed). ``warmup`` is a number of steps or a fraction of them.
    Strategy options go in ``**options`` (see ``STRATEGY_OPTIONS``). ``session`` is a
    ForgettingSession, needed by ``wise_ft(alpha="auto")``; the ``finetune`` fixture passes its own.
    The returned module is in eval mode, on ``device`` (default: the model's), in the model's
    dtype, and carries ``finetune_info`` (a FinetuneInfo).
    """
    import torch

    if model is None or not isinstance(model, torch.nn.Module):
        raise FinetuneError(f"model must be an nn.Module (the base checkpoint's, with the fixture), not {type(model).__name__}")
    if getattr(model, "hf_device_map", None):  # copies of it are moved with .to(), which accelerate refuses
        raise FinetuneError(
            "the model is split over devices by accelerate (hf_device_map, e.g. from --forgetting-device-map); "
            "finetune trains a copy on one device: load the model without a device map to fine-tune it"
        )
    opts = _check_options(strategy, options)
    _check_common(lr, epochs, max_steps, batch_size, weight_decay, lr_schedule, warmup, optimizer, time_budget_s,
                  layer_lr_decay, max_grad_norm)  # fmt: skip
    if strategy == "wise_ft" and opts["alpha"] != "auto":
        _float_option("wise_ft", "alpha", opts["alpha"], 0.0, 1.0)
    keep = _parse_keep(opts["keep"]) if strategy == "wise_ft" else []
    if strategy == "wise_ft" and opts["alpha"] == "auto":
        if not keep:
            raise FinetuneError("wise_ft(alpha='auto') needs keep=[{'task': ..., 'max_drop': ...}, ...] to search against")
        if session is None:
            raise FinetuneError("wise_ft(alpha='auto') decides with a forgetting session: use the finetune fixture or pass session=")
        alphas = [_float_option("wise_ft", "alphas[]", a, 0.0, 1.0) for a in opts["alphas"]]
        if not alphas:
            raise FinetuneError("wise_ft: alphas must not be empty")
    early = EarlyStopping.coerce(early_stopping)

    first = next(iter(model.parameters()), None)
    if first is None:
        raise FinetuneError("the model has no parameters to fine-tune")
    dev = torch.device(device) if device is not None else first.device
    orig_dtype = first.dtype if first.is_floating_point() else torch.float32
    if tokenizer is None:  # the checkpoint's own, when the plugin loaded (or fine-tuned) the model
        tokenizer = tokenizer_of(model)
    data = as_data(train, split=split, tokenizer=tokenizer, config=getattr(model, "config", None))
    if data.n == 0:
        raise FinetuneError(f"train: {data.name} has no examples")
    label = f"finetune[{strategy}]"
    reporter = _Progress(progress, label, log_every)
    info = FinetuneInfo(strategy=strategy, options={k: _describe(v) for k, v in opts.items()})
    start_time = time.perf_counter()

    with deterministic(int(seed), dev):
        start = copy.deepcopy(model).to(device=dev, dtype=torch.float32)
        start.eval()
        if strategy == "wise_ft" and opts["tuned"] is not None:
            tuned = copy.deepcopy(opts["tuned"]).to(device=dev, dtype=torch.float32)
        else:
            work = copy.deepcopy(start)
            tuned = _train(
                work, data, strategy=strategy, opts=opts, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=int(batch_size),
                seed=int(seed), weight_decay=weight_decay, optimizer=optimizer, lr_schedule=lr_schedule, warmup=warmup,
                max_grad_norm=max_grad_norm, layer_lr_decay=layer_lr_decay, early=early, time_budget_s=time_budget_s,
                tokenizer=tokenizer, device=dev, info=info, reporter=reporter, started=start_time,
            )  # fmt: skip
        tuned.eval()
        result = tuned
        if strategy == "wise_ft":
            if opts["alpha"] == "auto":
                base_slot = _base_slot_for(session, model)
                track = train if isinstance(train, str) and "test" in session.task(train).split_names() else None
                alpha, curve = _wise_ft_search(
                    start, tuned, keep=keep, alphas=alphas, session=session, base_slot=base_slot, track=track, progress=progress,
                    dtype=orig_dtype,
                )  # fmt: skip
                info.wise_ft_curve = curve
            else:
                alpha = float(opts["alpha"])
            info.wise_ft_alpha = alpha
            result = interpolate(start, tuned, alpha)
    result.to(dtype=orig_dtype).eval()
    info.seconds = time.perf_counter() - start_time
    info.total_params = sum(p.numel() for p in result.parameters())
    reporter.done(info)
    if save_to is not None:
        info.saved_to = save_model(result, save_to, tokenizer=tokenizer)
    result.finetune_info = info
    attach_tokenizer(result, tokenizer)  # the result is evaluated (and fine-tuned again) like its checkpoint
    if strategy == "wise_ft":
        result.wise_ft_alpha = info.wise_ft_alpha
        result.wise_ft_curve = info.wise_ft_curve
    return result


def _describe(value: Any) -> Any:
    """An option as plain data for ``finetune_info`` (tasks, datasets and modules by name)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (str, int, float, bool, dict)) for v in value):
        return list(value)
    name = getattr(value, "name", None)
    return f"<{type(value).__name__} {name}>" if isinstance(name, str) else f"<{type(value).__name__}>"


def _base_slot_for(session: Any, model: Any) -> Any:
    """The session's base slot when fine-tuning its base (evaluations cached), else a slot for a copy of ``model``."""
    base = getattr(session, "base", None)
    if base is not None and base.loaded is not None and base.loaded.model is model:
        return base
    return session.module_slot("base", copy.deepcopy(model))


def _train(
    model: "nn.Module", data: _Data, *, strategy: str, opts: dict[str, Any], lr: float, epochs: int | None, max_steps: int | None,
    batch_size: int, seed: int, weight_decay: float, optimizer: str, lr_schedule: str, warmup: int | float,
    max_grad_norm: float | None, layer_lr_decay: float | None, early: EarlyStopping | None, time_budget_s: float | None,
    tokenizer: Any, device: "torch.device", info: FinetuneInfo, reporter: _Progress, started: float,
) -> "nn.Module":
    import torch

    gen = np.random.default_rng(seed)
    train_idx = np.arange(data.n)
    val_idx = np.array([], dtype=np.int64)
    if early is not None:
        if not 0 < early.val_fraction < 1:
            raise FinetuneError(f"early_stopping: val_fraction={early.val_fraction!r} must be in (0, 1)")
        perm = gen.permutation(data.n)
        n_val = max(1, int(round(early.val_fraction * data.n)))
        if n_val >= data.n:
            raise FinetuneError(f"early_stopping: {data.name} has {data.n} examples, too few to hold out a validation set")
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    # -- strategy set-up ----------------------------------------------------------------------
    penalty: Callable[[Any], Any] | None = None
    replay: _Data | None = None
    n_replay = 0
    if strategy == "lora":
        model = _lora(model, opts).to(device)
    elif strategy == "adalora":  # the rank schedule needs the planned number of steps
        per_epoch = math.ceil(len(train_idx) / batch_size)
        planned = (epochs if epochs is not None else math.ceil(max_steps / per_epoch) if max_steps is not None else 1) * per_epoch
        model = _adalora(model, opts, planned if max_steps is None else min(max_steps, planned)).to(device)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    blocks = parameter_blocks(model)
    all_names = {n for n, _ in model.named_parameters()}
    if strategy == "freeze":
        _set_trainable(model, _freeze_names(model, blocks, opts))
    elif strategy == "gradual_unfreeze":
        _int_option("gradual_unfreeze", "blocks_per_epoch", opts["blocks_per_epoch"], 1)
        _set_trainable(model, _last_blocks(blocks, opts["blocks_per_epoch"]))
    elif strategy not in ("lora", "adalora"):
        _set_trainable(model, all_names)
    if strategy == "l2sp":
        penalty = _Anchor(model, _float_option("l2sp", "penalty", opts["penalty"], 0.0))
    elif strategy == "ewc":
        weight = _float_option("ewc", "penalty", opts["penalty"], 0.0)
        retained = as_data(opts["retain"], split=opts["retain_split"], tokenizer=tokenizer, what="retain", config=getattr(model, "config", None))
        n_fisher = min(_int_option("ewc", "fisher_examples", opts["fisher_examples"], 1), retained.n)
        idx = np.sort(np.random.default_rng(seed + 1).choice(retained.n, size=n_fisher, replace=False))
        fisher = fisher_diagonal(model, retained, idx, device)
        mean = float(torch.cat([f.reshape(-1) for f in fisher.values()]).mean())
        if mean > 0:  # normalised: with a uniform Fisher, EWC is L2-SP with the same penalty
            fisher = {n: f / mean for n, f in fisher.items()}
        penalty = _Anchor(model, weight, fisher)
        info.fisher_mean = mean
    elif strategy == "replay":
        fraction = _float_option("replay", "fraction", opts["fraction"], 0.0, 1.0, open_low=True)
        if fraction >= 1.0:
            raise FinetuneError("strategy 'replay': fraction must be below 1 (some of each batch must be new data)")
        replay = as_data(opts["retain"], split=opts["retain_split"], tokenizer=tokenizer, what="retain", config=getattr(model, "config", None))
        n_replay = min(max(1, int(round(fraction * batch_size))), batch_size - 1)
        if batch_size < 2:
            raise FinetuneError("strategy 'replay' needs batch_size >= 2 (new and replayed examples share each batch)")
    n_new = batch_size - n_replay

    # -- optimiser and schedule ----------------------------------------------------------------
    depth = {n: len(blocks) - 1 - i for i, (_, names) in enumerate(blocks) for n in names}
    groups: dict[tuple[int, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if strategy in ("freeze", "lora", "adalora") and not p.requires_grad:
            continue
        d = depth[name] if layer_lr_decay is not None else 0
        groups.setdefault((d, p.ndim >= 2), []).append(p)
    if not groups:
        raise FinetuneError(f"strategy {strategy!r}: no parameter trains")
    param_groups = [
        {"params": ps, "lr": lr * (layer_lr_decay**d if layer_lr_decay is not None else 1.0), "weight_decay": weight_decay if decay else 0.0}
        for (d, decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]
    opt = torch.optim.AdamW(param_groups, lr=lr) if optimizer == "adamw" else torch.optim.SGD(param_groups, lr=lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(train_idx) / n_new)
    n_epochs = epochs if epochs is not None else (math.ceil(max_steps / steps_per_epoch) if max_steps is not None else 1)
    total = n_epochs * steps_per_epoch if max_steps is None else min(max_steps, n_epochs * steps_per_epoch)
    info.planned_steps = total
    n_warm = int(warmup) if isinstance(warmup, (int, np.integer)) else int(round(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, n_warm, lr_schedule))

    # -- early stopping ------------------------------------------------------------------------
    watch: _Watch | None = None
    if early is not None:
        watch = _Watch(early, model, data, val_idx, tokenizer, device, seed, info)

    order_gen = torch.Generator().manual_seed(seed)
    replay_gen = torch.Generator().manual_seed(seed + 2)
    replay_order: list[int] = []
    step = 0
    stopped = ""
    params = dict(model.named_parameters())
    _train_mode(model)
    for epoch in range(n_epochs):
        if strategy == "gradual_unfreeze":
            k = opts["blocks_per_epoch"] * (epoch + 1)
            _set_trainable(model, _last_blocks(blocks, k))
            _train_mode(model)
        info.trainable_blocks_per_epoch.append(sum(1 for _, names in blocks if any(params[n].requires_grad for n in names)))
        info.epochs = epoch + 1
        perm = torch.randperm(len(train_idx), generator=order_gen).numpy()
        for lo in range(0, len(train_idx), n_new):
            idx = train_idx[perm[lo : lo + n_new]]
            x, y = data.batch(idx)
            info.new_examples += len(idx)
            if replay is not None:
                while len(replay_order) < n_replay:
                    replay_order.extend(torch.randperm(replay.n, generator=replay_gen).tolist())
                ridx, replay_order = np.array(replay_order[:n_replay]), replay_order[n_replay:]
                xr, yr = replay.batch(ridx)
                x, y = _concat(x, xr), torch.cat([y, yr])
                info.replayed_examples += len(ridx)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(_logits(model, _to(x, device)), y.to(device))
            if penalty is not None:
                loss = loss + penalty(model)
            if strategy == "adalora" and opts["orth_reg_weight"]:
                orth = _orthogonality(model)
                if orth is not None:
                    loss = loss + float(opts["orth_reg_weight"]) * orth
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
            opt.step()
            if strategy == "adalora":  # importance from this step's gradients, then the budget is re-allocated
                model.base_model.update_and_allocate(step)
            current_lr = opt.param_groups[-1]["lr"]
            sched.step()
            step += 1
            value = float(loss.detach())
            info.losses.append(value)
            info.steps = step
            reporter.step(step, total, epoch, value, current_lr)
            if not math.isfinite(value):
                stopped = "non-finite loss"
            elif step >= total:
                stopped = "max_steps" if max_steps is not None and step == max_steps else "epochs"
            elif time_budget_s is not None and time.perf_counter() - started >= time_budget_s:
                stopped = "time_budget"
            elif watch is not None and early is not None and early.every and step % early.every == 0:
                stopped = watch.check(model, step)
                _train_mode(model)
            if stopped:
                break
        if not stopped and watch is not None and early is not None and not early.every:
            stopped = watch.check(model, step)
            _train_mode(model)
        if stopped:
            break
    info.stopped = stopped or "epochs"
    if watch is not None:
        if info.stopped not in ("early_stopping", "retain_drop"):
            watch.check(model, step, final=True)
        watch.restore(model)
    info.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    if strategy not in ("lora", "adalora"):  # a PeftModel keeps its own flags (only the adapters train)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))
    return model


class _Watch:
    """Early-stopping bookkeeping: held-out accuracy, optional retained accuracy, best weights."""

    def __init__(self, early: EarlyStopping, model: Any, data: _Data, val_idx: np.ndarray, tokenizer: Any, device: Any,
                 seed: int, info: FinetuneInfo) -> None:
        self.early, self.data, self.val_idx, self.device, self.info = early, data, val_idx, device, info
        self.retain: _Data | None = None
        if early.retain is not None:
            self.retain = as_data(early.retain, split=early.retain_split, tokenizer=tokenizer, what="early_stopping retain",
                                  config=getattr(model, "config", None))
            n = min(early.retain_examples, self.retain.n)
            self.retain_idx = np.sort(np.random.default_rng(seed + 3).choice(self.retain.n, size=n, replace=False))
        self.retain_start = self._retained(model)
        self.best_score = _accuracy(model, data, val_idx, device)
        self.best_state = _state_copy(model)
        self.best_step = 0
        self.bad = 0
        info.validation.append({"step": 0, "val_accuracy": self.best_score, "retain_accuracy": self.retain_start})

    def _retained(self, model: Any) -> float | None:
        return None if self.retain is None else _accuracy(model, self.retain, self.retain_idx, self.device)

    def check(self, model: Any, step: int, final: bool = False) -> str:
        score = _accuracy(model, self.data, self.val_idx, self.device)
        retained = self._retained(model)
        self.info.validation.append({"step": step, "val_accuracy": score, "retain_accuracy": retained})
        broken = retained is not None and self.retain_start is not None and self.retain_start - retained > self.early.max_drop
        if not broken and score > self.best_score + self.early.min_delta:
            self.best_score, self.best_state, self.best_step, self.bad = score, _state_copy(model), step, 0
        elif not final:
            self.bad += 1
        if broken:
            return "retain_drop"
        if self.bad >= self.early.patience:
            return "early_stopping"
        return ""

    def restore(self, model: Any) -> None:
        if self.early.restore_best:
            model.load_state_dict(self.best_state)
            self.info.best_step = self.best_step


def _state_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _accuracy(model: Any, data: _Data, indices: np.ndarray, device: Any, batch_size: int = 256) -> float:
    import torch

    if len(indices) == 0:
        return float("nan")
    was = {m: m.training for m in model.modules()}
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(indices), batch_size):
            x, y = data.batch(indices[lo : lo + batch_size])
            correct += int((_logits(model, _to(x, device)).argmax(dim=1).cpu() == y).sum())
    for m, training in was.items():
        m.training = training
    return correct / len(indices)


# -- the fixture's object -----------------------------------------------------------------------


class Finetuner:
    """The ``finetune`` fixture: ``finetune(model=None, train=..., strategy=..., ...) -> nn.Module``.

    ``model=None`` fine-tunes (a copy of) the base checkpoint; the device is
    ``--forgetting-device``; progress goes to the pytest terminal; ``wise_ft(alpha="auto")``
    decides with the same session, statistics and cached base evaluations as ``forgetting``.
    """

    def __init__(self, run_state: Any, write: Callable[[str], None] | None = None) -> None:
        self._state = run_state
        self._write = write

    def __call__(self, model: Any = None, train: Any = None, **kwargs: Any) -> "nn.Module":
        __tracebackhide__ = True
        try:
            return self._call(model, train, **kwargs)
        except ForgettingError as exc:
            from .escape import terminal  # task and file names in the error: one visible line

            pytest.fail(terminal(f"finetune: {exc}"), pytrace=False)

    def _call(self, model: Any, train: Any, **kwargs: Any) -> "nn.Module":
        if train is None:
            raise FinetuneError("finetune() needs train= (a task name such as 'digits-28', a Task or a Dataset)")
        session = self._state.session
        tokenizer = kwargs.pop("tokenizer", None)
        if model is None:
            loaded = session.load(session.base_slot())
            model, tokenizer = loaded.model, tokenizer if tokenizer is not None else loaded.tokenizer
        elif tokenizer is None and tokenizer_of(model) is None:  # a module of the user's: the base's tokenizer
            tokenizer = session._base_tokenizer()
        kwargs.setdefault("device", session.device)
        kwargs.setdefault("progress", self._write)
        return finetune(model, train, session=session, tokenizer=tokenizer, **kwargs)


def terminal_writer(config: Any) -> Callable[[str], None] | None:
    """Lines to the pytest terminal, around output capture (None on xdist workers or without a terminal)."""
    if hasattr(config, "workerinput"):
        return None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return None

    def write(line: str) -> None:
        ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        with ctx:
            reporter.ensure_newline()
            reporter.write_line(line)

    return write


def fixture(config: Any) -> Finetuner:
    """What the ``finetune`` fixture returns."""
    from .runner import state

    return Finetuner(state(config), terminal_writer(config))
