"""What a ``finetune`` call is, without torch: the strategy names, their options, the training knobs.

``OPTIONS`` maps every strategy name to the frozen dataclass of its options (``REQUIRED``: a field
the call must give). ``STRATEGIES`` and ``STRATEGY_OPTIONS`` are derived from it, so the runner,
the Hypothesis generators (``pytest_forgetting.hyperparams``) and the error messages read one
list. ``TrainConfig`` holds the knobs every strategy shares (learning rate, steps, schedule, early
stopping), validated by :func:`check_common`. This module imports neither torch nor numpy at
import time (numpy scalars are recognised when the checks run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._util import suggest
from ..errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_ALPHAS = tuple(round(i / 10, 2) for i in range(11))

#: the default of an option the call must give (``retain`` of ``ewc`` and ``replay``)
REQUIRED: Any = object()


class FinetuneError(ConfigError):
    """A ``finetune`` call that cannot run as asked (bad argument, unsupported task or model)."""


# -- the options of each strategy (field order is the order of ``finetune_info.options``) ------------


@dataclass(frozen=True)
class FullOptions:
    """``full``: every parameter trains (no options)."""


@dataclass(frozen=True)
class FreezeOptions:
    """``freeze``: the last ``train_last`` blocks train (default 1), or all but the ``freeze`` patterns."""

    train_last: Any = None
    freeze: Any = None


@dataclass(frozen=True)
class GradualUnfreezeOptions:
    """``gradual_unfreeze``: the head first, then ``blocks_per_epoch`` deeper blocks per epoch."""

    blocks_per_epoch: Any = 1


@dataclass(frozen=True)
class LoraOptions:
    """``lora``: low-rank adapters of rank ``r`` (``alpha`` defaults to ``r``)."""

    r: Any = 8
    alpha: Any = None
    dropout: Any = 0.0
    target_modules: Any = None
    modules_to_save: Any = None


@dataclass(frozen=True)
class AdaLoraOptions:
    """``adalora``: adapters from rank ``init_r`` pruned to an average ``target_r`` (``tinit`` / ``tfinal``:
    steps before and after the budgeting phase, default 10 % and 20 % of the planned steps)."""

    init_r: Any = 12
    target_r: Any = 4
    alpha: Any = None
    dropout: Any = 0.0
    target_modules: Any = None
    modules_to_save: Any = None
    tinit: Any = None
    tfinal: Any = None
    delta_t: Any = 1
    beta1: Any = 0.85
    beta2: Any = 0.85
    orth_reg_weight: Any = 0.5


@dataclass(frozen=True)
class L2SPOptions:
    """``l2sp``: ``penalty / 2 * sum ||w - w_base||^2`` added to the loss."""

    penalty: Any = 1.0


@dataclass(frozen=True)
class EWCOptions:
    """``ewc``: the L2-SP penalty weighted by a diagonal Fisher from ``fisher_examples`` of ``retain``."""

    retain: Any = REQUIRED
    penalty: Any = 1.0
    fisher_examples: Any = 256
    retain_split: Any = "train"


@dataclass(frozen=True)
class ReplayOptions:
    """``replay``: a ``fraction`` of every batch is drawn from ``retain``."""

    retain: Any = REQUIRED
    fraction: Any = 0.25
    retain_split: Any = "train"


@dataclass(frozen=True)
class WiseFTOptions:
    """``wise_ft``: ``(1 - alpha) * base + alpha * tuned``; ``alpha="auto"`` searches ``alphas`` against ``keep``."""

    alpha: Any = 0.5
    keep: Any = ()
    alphas: Any = DEFAULT_ALPHAS
    tuned: Any = None


#: strategy name -> its options (the one list of strategies; order is the documented order)
OPTIONS: dict[str, type] = {
    "full": FullOptions,
    "freeze": FreezeOptions,
    "gradual_unfreeze": GradualUnfreezeOptions,
    "lora": LoraOptions,
    "adalora": AdaLoraOptions,
    "l2sp": L2SPOptions,
    "ewc": EWCOptions,
    "replay": ReplayOptions,
    "wise_ft": WiseFTOptions,
}

STRATEGIES = tuple(OPTIONS)

#: options of each strategy and their defaults (``REQUIRED``: must be given)
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    name: {f.name: f.default for f in dataclasses.fields(cls)} for name, cls in OPTIONS.items()
}

#: strategies that need a retained task (``retain=``)
NEEDS_RETAIN = tuple(name for name, opts in STRATEGY_OPTIONS.items() if opts.get("retain") is REQUIRED)


def check_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """The strategy's options with defaults filled in; unknown names and missing required ones are errors."""
    if strategy not in STRATEGIES:
        raise FinetuneError(
            f"unknown strategy {strategy!r}{suggest(str(strategy), STRATEGIES)}; strategies: {', '.join(STRATEGIES)}"
        )
    spec = STRATEGY_OPTIONS[strategy]
    for key in options:
        if key not in spec:
            allowed = ", ".join(spec) or "(none)"
            raise FinetuneError(
                f"strategy {strategy!r} has no option {key!r}{suggest(key, list(spec))}; its options: {allowed}"
            )
    opts = {**spec, **options}
    missing = [k for k, v in opts.items() if v is REQUIRED]
    if missing:
        raise FinetuneError(f"strategy {strategy!r} needs {', '.join(f'{k}=' for k in missing)} (e.g. retain='mnist')")
    return opts


def options_of(strategy: str, opts: Mapping[str, Any]) -> Any:
    """The options dataclass of ``strategy`` from checked options (see :func:`check_options`)."""
    return OPTIONS[strategy](**opts)


# -- scalar checks ------------------------------------------------------------------------------------


def _scalar_types() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``(integer types, number types)``, numpy's scalars included (numpy is imported on first use)."""
    import numpy as np

    return (int, np.integer), (int, float, np.integer, np.floating)


def is_integer(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, _scalar_types()[0])


def is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, _scalar_types()[1]) and math.isfinite(x)


def int_option(strategy: str, key: str, value: Any, low: int) -> int:
    """An integer option ``>= low`` of ``strategy``, or a one-line error."""
    if not is_integer(value) or value < low:
        raise FinetuneError(f"strategy {strategy!r}: {key}={value!r} must be an integer >= {low}")
    return int(value)


def float_option(
    strategy: str, key: str, value: Any, low: float, high: float | None = None, open_low: bool = False
) -> float:
    """A number option in ``[low, high]`` (``(low, ...`` with ``open_low``) of ``strategy``, or a one-line error."""
    ok = not isinstance(value, bool) and isinstance(value, _scalar_types()[1]) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        if high is not None:
            bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
        else:
            bound = f"{'>' if open_low else '>='} {low:g}"
        raise FinetuneError(f"strategy {strategy!r}: {key}={value!r} must be a number {bound}")
    return value


# -- the knobs every strategy shares ------------------------------------------------------------------


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
    def coerce(cls, value: Any) -> EarlyStopping | None:
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
                    raise FinetuneError(
                        f"early_stopping: unknown key {key!r}{suggest(key, names)}; keys: {', '.join(names)}"
                    )
            return cls(**value)
        raise FinetuneError(f"early_stopping={value!r}: expected True, a patience (int), a dict or EarlyStopping(...)")


def check_common(
    lr: Any,
    epochs: Any,
    max_steps: Any,
    batch_size: Any,
    weight_decay: Any,
    lr_schedule: Any,
    warmup: Any,
    optimizer: Any,
    time_budget_s: Any,
    layer_lr_decay: Any,
    max_grad_norm: Any,
) -> None:
    """One-line errors for the shared training knobs (the strategy's own options are checked where used)."""

    def bad(msg: str) -> None:
        raise FinetuneError(msg)

    number, integer = is_number, is_integer
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
        bad(
            f"layer_lr_decay={layer_lr_decay!r} must be in (0, 1] "
            "(each block down from the head gets lr * decay**depth)"
        )
    if max_grad_norm is not None and (not number(max_grad_norm) or max_grad_norm <= 0):
        bad(f"max_grad_norm={max_grad_norm!r} must be a positive number")


@dataclass(frozen=True)
class TrainConfig:
    """The training knobs of one call, checked (see ``finetune`` for their meaning).

    ``epochs`` passes over the training split, or ``max_steps`` optimiser steps, or whichever
    ends first; neither given: one epoch.
    """

    lr: float = 1e-3
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    lr_schedule: str = "constant"
    warmup: int | float = 0
    max_grad_norm: float | None = None
    layer_lr_decay: float | None = None
    early: EarlyStopping | None = None
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        check_common(
            self.lr,
            self.epochs,
            self.max_steps,
            self.batch_size,
            self.weight_decay,
            self.lr_schedule,
            self.warmup,
            self.optimizer,
            self.time_budget_s,
            self.layer_lr_decay,
            self.max_grad_norm,
        )
        object.__setattr__(self, "batch_size", int(self.batch_size))
