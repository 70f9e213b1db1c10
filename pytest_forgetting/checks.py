"""Retention / improvement checks: what a marker (or a declaration) asks for, validated.

``@pytest.mark.retains(task=..., max_drop=...)`` and ``@pytest.mark.improves(task=...,
min_gain=...)`` become frozen ``Check`` records at collection time. Validation needs only
the task registry (no model, no data beyond the task's size), so a typo is a usage error
before anything heavy runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError
from .registry import REGISTRY, suggest
from .results import CheckKind
from .results import min_gain as _min_gain

RETAINS_KEYS: tuple[str, ...] = (
    "task",
    "max_drop",
    "metric",
    "relative",
    "max_class_drop",
    "max_nfr",
    "split",
    "slices",
    "max_gap_increase",
    "class_metric",
)
IMPROVES_KEYS: tuple[str, ...] = ("task", "min_gain", "metric", "relative", "split")
#: score_range=(low, high): every per-example score of both models lies in it (issue 11), so the
#: drop gets bounds valid at every n (stats.compare_scores) instead of the asymptotic bootstrap
RETAINS_KEYS += ("score_range",)
IMPROVES_KEYS += ("score_range",)


@dataclass(frozen=True)
class Check:
    kind: CheckKind  # a str enum: equal to (and printed as) "retains" | "improves"
    task: str
    metric: str
    margin: float  # max_drop, or -min_gain for improves (read min_gain, never -margin)
    relative: bool = False
    split: str = "test"
    max_class_drop: float | None = None
    max_nfr: float | None = None
    slices: str | None = None
    #: the best-minus-worst slice (or class) gap may widen by at most this (``gap.compare_gap``)
    max_gap_increase: float | None = None
    #: what max_class_drop budgets per class: "recall" (per-class accuracy) or "precision" (class_budget.py)
    class_metric: str = "recall"
    #: declared (low, high) of the per-example scores, or None (the metric's own, if any)
    score_range: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        return (
            f"{self.kind}[{self.task}]"
            if self.metric in ("", "accuracy")
            else f"{self.kind}[{self.task}:{self.metric}]"
        )

    @property
    def min_gain(self) -> float | None:
        """An ``improves`` check's required gain (:func:`results.min_gain` of the margin); None for ``retains``."""
        return None if self.kind == CheckKind.RETAINS else float(_min_gain(self.margin))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (``kind`` the plain string, as before it was a :class:`CheckKind`)."""
        return {**asdict(self), "kind": str(self.kind)}


def _number(where: str, key: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value!r} must be a finite number")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        hint = ""
        if high == 1.0 and 1.0 < value <= 100.0:
            hint = f" (a fraction: {value:g}% is {key}={value / 100:g})"
        raise ConfigError(f"{where}: {key}={value:g} is outside [{low:g}, {high:g}]{hint}")
    return value


def parse_check(kind: str, kwargs: Mapping[str, Any], where: str, args: tuple[Any, ...] = ()) -> Check:
    """Validate marker/declaration arguments into a Check; ConfigError with "did you mean" on mistakes."""
    from dataclasses import replace

    kwargs = dict(kwargs)
    declared = kwargs.pop("score_range", None)
    check = _parse_fields(kind, kwargs, where, args)
    if declared is None:
        return check
    from .bounded import check_score_range

    if isinstance(declared, list):  # a TOML array
        declared = tuple(declared)
    if not isinstance(declared, tuple) or any(isinstance(v, bool) for v in declared):
        raise ConfigError(f"{where}: score_range={declared!r} must be a pair (low, high) of numbers")
    try:
        return replace(check, score_range=check_score_range(declared))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_fields(kind: str, kwargs: Mapping[str, Any], where: str, args: tuple[Any, ...] = ()) -> Check:
    """:func:`parse_check` for every keyword but score_range."""
    allowed = RETAINS_KEYS if kind == "retains" else IMPROVES_KEYS
    kwargs = dict(kwargs)
    if args:
        if len(args) > 1 or "task" in kwargs:
            raise ConfigError(
                f"{where}: {kind}() takes the task as its only positional argument; use keywords for the rest"
            )
        kwargs["task"] = args[0]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown keyword {key!r} for {kind}(){suggest(key, allowed)}; allowed: {', '.join(allowed)}"
            )
    if "task" not in kwargs:
        raise ConfigError(f"{where}: {kind}() needs task=")
    task_name = kwargs["task"]
    if not isinstance(task_name, str):
        raise ConfigError(f"{where}: task={task_name!r} must be a task name (str)")
    if task_name not in REGISTRY:
        _unknown_task(where, task_name)

    metric = kwargs.get("metric")
    relative = kwargs.get("relative", False)
    if not isinstance(relative, bool):
        raise ConfigError(f"{where}: relative={relative!r} must be True or False")
    split = kwargs.get("split", "test")
    if not isinstance(split, str):
        raise ConfigError(f"{where}: split={split!r} must be a string")
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(f"{where}: metric={metric!r} must be a metric name")

    from . import metrics as _metrics
    from .proba_metrics import PROBA_METRICS

    known_metrics = {m.name: m for m in vars(_metrics).values() if isinstance(m, _metrics.Metric)}
    known_metrics.update(PROBA_METRICS)
    metric_obj = known_metrics.get(metric) if metric else None
    bounded = metric_obj.bounded if metric_obj is not None else True

    if kind == "retains":
        if "max_drop" not in kwargs:
            raise ConfigError(f"{where}: retains() needs max_drop= (e.g. max_drop=0.02 for two points)")
        high = 1.0 if (bounded or relative) else None
        margin = _number(where, "max_drop", kwargs["max_drop"], 0.0, high)
        mcd = kwargs.get("max_class_drop")
        mgi = kwargs.get("max_gap_increase")
        mnfr = kwargs.get("max_nfr")
        slices = kwargs.get("slices")
        if slices is not None and not isinstance(slices, str):
            raise ConfigError(f"{where}: slices={slices!r} must be a column name")
        from .class_budget import check_class_metric

        class_metric = check_class_metric(
            where, kwargs.get("class_metric", "recall"), max_class_drop=mcd, slices=slices
        )
        return Check(
            CheckKind.RETAINS,
            task_name,
            metric or "",
            margin,
            relative,
            split,
            None if mcd is None else _number(where, "max_class_drop", mcd, 0.0, 1.0),
            None if mnfr is None else _number(where, "max_nfr", mnfr, 0.0, 1.0),
            slices,
            None if mgi is None else _number(where, "max_gap_increase", mgi, 0.0, 1.0 if bounded else None),
            class_metric,
        )
    if "min_gain" not in kwargs:
        raise ConfigError(f"{where}: improves() needs min_gain= (e.g. min_gain=0.05 for five points)")
    gain = _number(where, "min_gain", kwargs["min_gain"], 0.0, 1.0 if (bounded or relative) else None)
    return Check(CheckKind.IMPROVES, task_name, metric or "", -gain, relative, split)


def _unknown_task(where: str, name: str) -> None:
    names = REGISTRY.names()
    raise ConfigError(f"{where}: unknown task {name!r}{suggest(name, names)}; known tasks: {', '.join(names)}")


def bind_task(check: Check, where: str, task: Any) -> Check:
    """Fill the default metric and validate metric / split / slices against the built task."""
    from dataclasses import replace

    from .metrics import PerExampleMetric

    try:
        metric = check.metric or task.default_metric
        m = task.check_metric(metric)
        task.check_split(check.split)
        if check.slices:
            task.slice_column(check.split, check.slices)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not m.bounded and not check.relative:
        pass  # any non-negative margin is meaningful in the metric's own units
    elif abs(check.margin) > 1.0:
        raise ConfigError(f"{where}: margin {abs(check.margin):g} is outside [0, 1] for metric {metric!r}")
    if check.score_range is not None and not isinstance(m, PerExampleMetric):
        raise ConfigError(f"{where}: score_range applies to per-example metrics; {metric!r} is an aggregate")
    return replace(check, metric=metric)
