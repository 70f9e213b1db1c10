"""Hypothesis search strategies over fine-tuning hyperparameters, for property tests with ``finetune``.

```python
from hypothesis import given, settings
import pytest_forgetting.hyperparams as hp

@settings(max_examples=8, deadline=None)
@given(cfg=hp.finetune_configs(strategies=["freeze", "l2sp", "replay"], lr=(1e-4, 3e-3), epochs=(1, 3), retain="mnist"))
def test_no_config_forgets(finetune, forgetting, cfg):
    forgetting.assert_retains(finetune(train="digits-28", **cfg), task="mnist", max_drop=0.05)
```

In this package a *strategy* is a fine-tuning strategy (``full``, ``lora``, ``replay``...); what this
module returns are Hypothesis ``SearchStrategy`` objects that draw ``finetune`` arguments. (Its
old name, ``pytest_forgetting.strategies``, still imports this module.)

Every strategy shrinks towards the *gentlest* fine-tune: the learning rate, epochs, steps,
LoRA rank, trainable depth and WiSE-FT alpha towards their low end, the L2-SP / EWC penalty
and the replay fraction towards their high end, the strategy towards the first one listed. A
failing property therefore reports the least aggressive configuration that still breaks the
contract. (Batch sizes shrink towards the smallest.) Values are rounded (learning rates to two
significant digits) so that the falsifying example reads well. Every argument of
:func:`finetune_configs` takes a ``(low, high)`` range, a fixed value or a Hypothesis strategy of
your own, and ``extra`` adds keys of your own; the result is a
plain ``st.fixed_dictionaries`` per strategy, so it composes with ``st.builds``, ``.filter``,
``.map`` and ``st.one_of``. The strategy names come from ``pytest_forgetting.finetune.spec``;
this module imports neither torch nor the runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from .finetune.spec import NEEDS_RETAIN, STRATEGIES

_GRID = 1000  # resolution of the continuous ranges

__all__ = [
    "batch_sizes",
    "epochs",
    "finetune_configs",
    "learning_rates",
    "log_uniform",
    "steps",
    "strategy_options",
]


def _round_sig(x: float, digits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def log_uniform(low: float, high: float, *, digits: int = 2, shrink_towards: str = "low") -> SearchStrategy[float]:
    """Floats in [low, high], uniform in log space, rounded to ``digits`` significant digits.

    Shrinks towards ``low`` (or ``high`` with ``shrink_towards="high"``).
    """
    numbers = isinstance(low, (int, float)) and isinstance(high, (int, float))
    if not (numbers and 0 < low <= high and math.isfinite(high)):
        raise InvalidArgument(f"log_uniform needs 0 < low <= high, got low={low!r}, high={high!r}")
    if shrink_towards not in ("low", "high"):
        raise InvalidArgument(f"shrink_towards={shrink_towards!r}: expected 'low' or 'high'")
    if low == high:
        return st.just(float(low))
    span = math.log(high / low)
    start, sign = (low, 1.0) if shrink_towards == "low" else (high, -1.0)

    def to_value(i: int) -> float:
        return min(max(_round_sig(start * math.exp(sign * i / _GRID * span), digits), float(low)), float(high))

    # an integer grid rather than floats: integers shrink monotonically towards 0
    # (floats shrink towards "simple" values)
    return st.integers(0, _GRID).map(to_value)


def learning_rates(low: float = 1e-5, high: float = 1e-2) -> SearchStrategy[float]:
    """Learning rates, log-uniform in [low, high]; shrinks towards ``low``."""
    return log_uniform(low, high)


def _int_range(name: str, low: int, high: int, minimum: int = 1) -> SearchStrategy[int]:
    if not (isinstance(low, int) and isinstance(high, int)) or low < minimum or high < low:
        raise InvalidArgument(f"{name} needs integers {minimum} <= low <= high, got low={low!r}, high={high!r}")
    return st.integers(low, high)


def epochs(low: int = 1, high: int = 3) -> SearchStrategy[int]:
    """Numbers of epochs in [low, high]; shrinks towards ``low``."""
    return _int_range("epochs", low, high)


def steps(low: int = 10, high: int = 200) -> SearchStrategy[int]:
    """Numbers of optimiser steps (``max_steps``) in [low, high]; shrinks towards ``low``."""
    return _int_range("steps", low, high)


def batch_sizes(low: int = 8, high: int = 128) -> SearchStrategy[int]:
    """Powers of two in [low, high], smallest first (shrinks towards ``low``)."""
    if not (isinstance(low, int) and isinstance(high, int)) or low < 1 or high < low:
        raise InvalidArgument(f"batch_sizes needs integers 1 <= low <= high, got low={low!r}, high={high!r}")
    sizes = [2**k for k in range(0, 31) if low <= 2**k <= high]
    if not sizes:
        raise InvalidArgument(f"batch_sizes: no power of two in [{low}, {high}]")
    return st.sampled_from(sizes)


def _fraction(low: float, high: float, shrink_towards: str = "low") -> SearchStrategy[float]:
    """Floats in [low, high] rounded to two decimals, shrinking towards one end."""
    start, sign = (low, 1.0) if shrink_towards == "low" else (high, -1.0)
    return st.integers(0, _GRID).map(lambda i: min(max(round(start + sign * i / _GRID * (high - low), 2), low), high))


# each strategy's options, built for one ``retain`` (the retained task of ewc / replay); each option shrinks
# towards its gentlest value (least change to the base model)
_OPTION_STRATEGIES: dict[str, Callable[[Any], dict[str, SearchStrategy[Any]]]] = {
    "freeze": lambda retain: {"train_last": st.integers(1, 3)},
    "gradual_unfreeze": lambda retain: {"blocks_per_epoch": st.integers(1, 2)},
    "lora": lambda retain: {"r": st.sampled_from([2, 4, 8, 16])},
    "adalora": lambda retain: {"target_r": st.sampled_from([2, 4])},
    "l2sp": lambda retain: {"penalty": log_uniform(0.01, 10.0, shrink_towards="high")},
    "ewc": lambda retain: {"retain": st.just(retain), "penalty": log_uniform(0.01, 10.0, shrink_towards="high")},
    "replay": lambda retain: {"retain": st.just(retain), "fraction": _fraction(0.05, 0.5, shrink_towards="high")},
    "wise_ft": lambda retain: {"alpha": _fraction(0.0, 1.0)},
}


def _option_strategies(name: str, retain: Any) -> dict[str, SearchStrategy[Any]]:
    """Each option shrinks towards its gentlest value (least change to the base model); {} for a strategy without."""
    build = _OPTION_STRATEGIES.get(name)
    return build(retain) if build is not None else {}


def strategy_options(name: str, *, retain: Any = None, **overrides: Any) -> SearchStrategy[dict[str, Any]]:
    """The options of one fine-tuning strategy as a dict: LoRA rank, frozen depth, L2-SP / EWC penalty,
    replay fraction, WiSE-FT alpha.

    ``retain`` is the retained task of ``ewc`` / ``replay``. ``overrides`` replace or add options
    (fixed values or strategies), e.g. ``strategy_options("lora", r=st.just(4), dropout=0.1)``.
    """
    if name not in STRATEGIES:
        raise InvalidArgument(f"unknown fine-tuning strategy {name!r}; strategies: {', '.join(STRATEGIES)}")
    parts = _options(name, retain, overrides, "strategy_options")
    return _ordered(parts)


def _ordered(parts: dict[str, SearchStrategy[Any]]) -> SearchStrategy[dict[str, Any]]:
    """``st.fixed_dictionaries(parts)`` with its keys in the order of ``parts`` (a stable, readable key order)."""
    order = tuple(parts)
    return st.fixed_dictionaries(parts).map(lambda cfg: {k: cfg[k] for k in order})


def _options(name: str, retain: Any, overrides: Mapping[str, Any], where: str) -> dict[str, SearchStrategy[Any]]:
    if name in NEEDS_RETAIN and retain is None and "retain" not in overrides:
        raise InvalidArgument(f"strategy {name!r} needs a retained task: {where}(..., retain='mnist')")
    opts = _option_strategies(name, retain)
    for key, value in overrides.items():
        opts[key] = _as_strategy(value)
    return opts


def _as_strategy(value: Any, range_of: Any = None) -> SearchStrategy[Any]:
    if isinstance(value, SearchStrategy):
        return value
    if range_of is not None and isinstance(value, tuple) and len(value) == 2:
        return range_of(*value)
    return st.just(value)


def finetune_configs(
    strategies: Sequence[str] | None = None,
    *,
    lr: Any = (1e-4, 3e-3),
    epochs: Any = (1, 3),
    steps: Any = None,
    batch_size: Any = 32,
    seed: Any = 0,
    retain: Any = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """Dicts to pass as ``finetune(train=..., **cfg)``: ``strategy``, ``lr``, ``epochs`` or ``max_steps``,
    ``batch_size``, ``seed`` and the strategy's options.

    ``lr`` / ``epochs`` / ``steps`` / ``batch_size`` / ``seed``: a ``(low, high)`` range (log-uniform
    for ``lr``, powers of two for ``batch_size``), a fixed value, or a strategy. ``steps`` replaces
    ``epochs`` by ``max_steps``. ``strategies`` defaults to all of them (``ewc`` and ``replay`` only
    with ``retain``). ``options`` overrides per strategy, e.g. ``{"lora": {"r": st.sampled_from([4, 8])}}``;
    ``extra`` adds keys to every config, e.g. ``{"weight_decay": st.sampled_from([0.0, 0.01])}``.
    """
    if strategies is None:
        strategies = [s for s in STRATEGIES if s not in NEEDS_RETAIN or retain is not None]
    if isinstance(strategies, str):
        strategies = [strategies]
    strategies = list(strategies)
    if not strategies:
        raise InvalidArgument("finetune_configs needs at least one strategy")
    options = dict(options or {})
    for name in list(options) + strategies:
        if name not in STRATEGIES:
            raise InvalidArgument(f"unknown fine-tuning strategy {name!r}; strategies: {', '.join(STRATEGIES)}")
    common: dict[str, SearchStrategy[Any]] = {"lr": _as_strategy(lr, learning_rates)}
    if steps is not None:
        common["max_steps"] = _as_strategy(steps, lambda lo, hi: _int_range("steps", lo, hi))
    else:
        common["epochs"] = _as_strategy(epochs, lambda lo, hi: _int_range("epochs", lo, hi))
    common["batch_size"] = _as_strategy(batch_size, batch_sizes)
    common["seed"] = _as_strategy(seed, lambda lo, hi: st.integers(lo, hi))
    for key, value in (extra or {}).items():
        common[key] = _as_strategy(value)
    return st.one_of([_branch(name, common, retain, options.get(name, {})) for name in strategies])


def _branch(
    name: str, common: dict[str, SearchStrategy[Any]], retain: Any, overrides: Mapping[str, Any]
) -> SearchStrategy[dict[str, Any]]:
    """One strategy's configs as a single fixed_dictionaries (each key shrinks on its own; no flatmap)."""
    parts = {"strategy": st.just(name), **common, **_options(name, retain, overrides, "finetune_configs")}
    return _ordered(parts)
