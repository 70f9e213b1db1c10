"""Metrics: one record per metric, carrying its direction and how it is computed.

A metric reads the per-example outputs of an evaluation (``dict[str, np.ndarray]``, e.g.
``{"pred": ..., "label": ...}`` for classification or ``{"nll": ..., "ntok": ...}`` for
language modelling). A :class:`PerExampleMetric` gives one score per example (0/1 correctness,
so the paired score interval applies); an :class:`AggregateMetric` is a function of a set of
examples (macro-F1, perplexity), compared with a paired bootstrap over examples, and may declare
a ratio form and a sensitivity for the decision core. Both carry their direction
(``higher_is_better``) and boundedness on the common base :class:`Metric`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .stats import Ratio, Sensitivity

Outputs = Mapping[str, np.ndarray]


class _RecordCall(type):
    """``Metric(...)`` called directly builds the record its callable asks for (the pre-split
    constructor, kept for user code); the subclasses construct as dataclasses do."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Metric:
            return _from_record(*args, **kwargs)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class Metric(metaclass=_RecordCall):
    """What every metric declares: its name, its direction and whether its values lie in [0, 1].

    A metric is one of two kinds, told apart by type: :class:`PerExampleMetric` (one score per
    example; the value is their mean) or :class:`AggregateMetric` (a function of a set of examples).
    ``Metric(name, higher_is_better, bounded, per_example=... | aggregate=..., ...)`` still builds
    the matching one.
    """

    name: str
    higher_is_better: bool
    bounded: bool  # values in [0, 1]: max_drop must lie in [0, 1] for absolute drops
    description: str = field(default="", kw_only=True)

    def value(self, outputs: Outputs, idx: np.ndarray | None = None) -> float:
        """The metric over the examples ``idx`` of ``outputs`` (all of them when None)."""
        if idx is None:
            idx = np.arange(len(next(iter(outputs.values()))))
        return self._value(outputs, idx)

    def _value(self, outputs: Outputs, idx: np.ndarray) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class PerExampleMetric(Metric):
    """A mean of per-example scores (0/1 correctness or continuous): compared with the paired score tests."""

    per_example: Callable[[Outputs], np.ndarray]
    # (low, high) that every per-example score lies in by definition (beyond 0/1): the decision
    # then uses bounds valid at every n (stats.compare_scores(score_range=...)).
    score_range: tuple[float, float] | None = field(default=None, kw_only=True)

    #: the pre-split record's other callable (always None here), for code that still reads it
    aggregate: ClassVar[None] = None

    def _value(self, outputs: Outputs, idx: np.ndarray) -> float:
        return float(np.mean(self.per_example(outputs)[idx]))


@dataclass(frozen=True)
class AggregateMetric(Metric):
    """A function of a set of examples ``(outputs, idx) -> float``: compared with a paired bootstrap."""

    aggregate: Callable[[Outputs, np.ndarray], float]
    # An aggregate written as (a macro average of) ratios of per-example sums: outputs ->
    # (numerator, denominator), each (n,) or (n, K); value = transform(mean_k sum num / sum den).
    # It lets the decision core use a studentised bootstrap with a delta-method standard error
    # (stats.Ratio) instead of treating the metric as a black box.
    ratio: Callable[[Outputs], tuple[np.ndarray, np.ndarray]] | None = field(default=None, kw_only=True)
    transform: str = field(default="identity", kw_only=True)
    # Whether the ratio's denominators are the same for both models (tokens, words, support);
    # None: every ratio but macro-F1's. Used only to bound the metric when no example changed.
    ratio_den_fixed: bool | None = field(default=None, kw_only=True)
    # False for a ratio with no exact bound when no example changed (entity counts per sentence
    # are unbounded): then identical outputs are left to the black-box path (no spread: INCONCLUSIVE).
    ratio_no_change: bool = field(default=True, kw_only=True)
    # (base outputs, tuned outputs) -> stats.Sensitivity: how far the metric can move when a
    # fraction of the examples changes, for the exact no-change rule of bounded aggregates.
    sensitivity: Callable[[Outputs, Outputs], Sensitivity] | None = field(default=None, kw_only=True)

    #: the pre-split record's other callable (always None here), for code that still reads it
    per_example: ClassVar[None] = None
    score_range: ClassVar[None] = None

    def _value(self, outputs: Outputs, idx: np.ndarray) -> float:
        return float(self.aggregate(outputs, idx))


_AGGREGATE_ONLY = ("ratio", "transform", "ratio_den_fixed", "ratio_no_change", "sensitivity")


def _from_record(
    name: str,
    higher_is_better: bool,
    bounded: bool,
    per_example: Callable[[Outputs], np.ndarray] | None = None,
    aggregate: Callable[[Outputs, np.ndarray], float] | None = None,
    description: str = "",
    **options: Any,
) -> PerExampleMetric | AggregateMetric:
    """The pre-split ``Metric(...)`` signature: exactly one of ``per_example`` / ``aggregate``."""
    if (per_example is None) == (aggregate is None):
        raise TypeError(f"metric {name!r}: give exactly one of per_example= or aggregate=")
    if per_example is not None:
        extra = sorted(set(options) & set(_AGGREGATE_ONLY))
        if extra:
            raise TypeError(f"metric {name!r}: {', '.join(extra)}: only for aggregate= metrics, not per_example=")
        return PerExampleMetric(name, higher_is_better, bounded, per_example, description=description, **options)
    assert aggregate is not None
    if "score_range" in options:
        raise TypeError(f"metric {name!r}: score_range applies to per_example= metrics, not aggregate=")
    return AggregateMetric(name, higher_is_better, bounded, aggregate, description=description, **options)


def _correct(o: Outputs) -> np.ndarray:
    return (o["pred"] == o["label"]).astype(np.float64)


def _error(o: Outputs) -> np.ndarray:
    return (o["pred"] != o["label"]).astype(np.float64)


def f1_macro(o: Outputs, idx: np.ndarray, n_classes: int | None = None) -> float:
    """Macro-averaged F1 over the classes present in the labels or predictions of idx.

    With ``n_classes=K`` every class 0..K-1 counts, a class absent from both scoring 0, as
    scikit-learn's ``f1_score(..., labels=range(K), average="macro")`` does.
    """
    y = np.asarray(o["label"])[idx].astype(np.int64)
    p = np.asarray(o["pred"])[idx].astype(np.int64)
    k = int(max(y.max(initial=0), p.max(initial=0))) + 1 if n_classes is None else n_classes
    tp = np.bincount(y[y == p], minlength=k).astype(np.float64)
    support = np.bincount(y, minlength=k).astype(np.float64)
    predicted = np.bincount(p, minlength=k).astype(np.float64)
    present = (support + predicted) > 0 if n_classes is None else np.ones(k, dtype=bool)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def _class_count(o: Outputs) -> int:
    y = np.asarray(o["label"]).astype(np.int64)
    p = np.asarray(o["pred"]).astype(np.int64)
    return int(max(y.max(initial=0), p.max(initial=0))) + 1


def _f1_macro_ratio(o: Outputs, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per example and class: 2 * [true positive] over [label is k] + [prediction is k]."""
    y = np.asarray(o["label"]).astype(np.int64)
    p = np.asarray(o["pred"]).astype(np.int64)
    k = _class_count(o) if k is None else k
    rows = np.arange(y.size)
    hit = y == p
    num = np.zeros((y.size, k))
    num[rows[hit], y[hit]] = 2.0
    den = np.zeros((y.size, k))
    den[rows, y] = 1.0
    den[rows, p] += 1.0  # one entry per row: no repeated index within the assignment
    return num, den


def _balanced_accuracy_ratio(o: Outputs, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per example and class: [hit] over [label is k]; classes only ever seen as predictions
    have a zero denominator and drop out, as in :func:`balanced_accuracy`."""
    y = np.asarray(o["label"]).astype(np.int64)
    p = np.asarray(o["pred"]).astype(np.int64)
    k = _class_count(o) if k is None else k
    rows = np.arange(y.size)
    hit = y == p
    num = np.zeros((y.size, k))
    num[rows[hit], y[hit]] = 1.0
    den = np.zeros((y.size, k))
    den[rows, y] = 1.0
    return num, den


def ratio_of(metric: Metric, base: Outputs, tuned: Outputs) -> Ratio | None:
    """The :class:`~pytest_forgetting.stats.Ratio` form of a metric on both models' outputs (one
    column layout for both: the union of their classes), or None for metrics without one."""
    if not isinstance(metric, AggregateMetric) or metric.ratio is None:
        return None
    if metric.ratio in (_f1_macro_ratio, _balanced_accuracy_ratio):
        k = max(_class_count(base), _class_count(tuned))
        nb, db = metric.ratio(base, k)
        nt, dt = metric.ratio(tuned, k)
    else:
        nb, db = metric.ratio(base)
        nt, dt = metric.ratio(tuned)
        if not (np.sum(db) > 0 and np.sum(dt) > 0):
            return None  # a ratio of nothing (no entity at all): the metric's own convention decides
        if not metric.ratio_no_change and np.array_equal(nb, nt) and np.array_equal(db, dt):
            return None
    # F1's denominators count predictions, so they move with the model; the others count
    # references (support, tokens, words) and do not.
    den_fixed = metric.ratio is not _f1_macro_ratio if metric.ratio_den_fixed is None else metric.ratio_den_fixed
    return Ratio(nb, db, nt, dt, transform=metric.transform, den_fixed=den_fixed)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, codes = np.unique(values, return_inverse=True)
    return classes, codes.reshape(-1).astype(np.int64)


def _others_min(w: np.ndarray) -> np.ndarray:
    """For each entry, the smallest of the *other* entries (inf when there is none)."""
    if w.size < 2:
        return np.full(w.shape, np.inf)
    order = np.sort(w)
    return np.where(w == order[0], order[1], order[0])


def _pred_keys(base: Outputs, tuned: Outputs) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(base["pred"], dtype=np.float64), np.asarray(tuned["pred"], dtype=np.float64)


def _n_present(o: Outputs) -> int:
    return int(np.union1d(np.asarray(o["label"]), np.asarray(o["pred"])).size)


def f1_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """Macro-F1, strata = labels. For a class k with support share s_k, predicted share p_k and
    true-positive share t_k (0 <= t_k <= min(s_k, p_k), a convex set, so the segment between
    two models stays in it), F1_k = 2 t_k / (s_k + p_k). A changed example of label j moves
    (t_j, p_j) together (derivative 2 (s+p-t) / (s+p)^2 <= 2 / s_j) and the predicted share of
    one other class v alone (|derivative| 2 t / (s+p)^2 <= 1 / (2 max(s, p)) <= 1 / (2 s_v); a
    class without support has F1 = 0 whatever it is predicted). So a fraction g_j of label j
    changing moves the macro average by at most g_j s_j (2 / s_j + 1 / (2 min_{v != j} s_v)) / K."""
    _, codes = _codes(np.asarray(base["label"]))
    w = np.bincount(codes).astype(np.float64) / codes.size
    per_class = 2.0 + w / (2.0 * _others_min(w))
    kb, kt = _pred_keys(base, tuned)
    return Sensitivity(codes, per_class / _n_present(base), kb, kt, slope_tuned=per_class / _n_present(tuned))


def balanced_accuracy_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """Mean recall over the labelled classes, strata = labels: a fraction g_j of label j changing
    moves recall_j, hence the mean, by at most g_j (/ K): exact."""
    _, codes = _codes(np.asarray(base["label"]))
    k = int(codes.max()) + 1
    kb, kt = _pred_keys(base, tuned)
    return Sensitivity(codes, np.full(k, 1.0 / k), kb, kt)


def balanced_accuracy(o: Outputs, idx: np.ndarray) -> float:
    y = np.asarray(o["label"])[idx].astype(np.int64)
    p = np.asarray(o["pred"])[idx].astype(np.int64)
    k = int(y.max(initial=0)) + 1
    support = np.bincount(y, minlength=k).astype(np.float64)
    hits = np.bincount(y[y == p], minlength=k).astype(np.float64)
    present = support > 0
    return float((hits[present] / support[present]).mean()) if present.any() else 0.0


def _mean_nll(o: Outputs, idx: np.ndarray) -> float:
    tokens = float(np.sum(o["ntok"][idx]))
    return float(np.sum(o["nll"][idx]) / tokens) if tokens > 0 else float("nan")


def _perplexity(o: Outputs, idx: np.ndarray) -> float:
    return float(np.exp(_mean_nll(o, idx)))


def _exact(o: Outputs) -> np.ndarray:
    return np.asarray(o["exact"]).astype(np.float64)


def _nll_ratio(o: Outputs) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(o["nll"], dtype=np.float64), np.asarray(o["ntok"], dtype=np.float64)


def _error_parts(errors: str, total: str) -> Callable[[Outputs], tuple[np.ndarray, np.ndarray]]:
    def parts(o: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(o[errors], dtype=np.float64), np.asarray(o[total], dtype=np.float64)

    return parts


def _error_ratio(errors: str, total: str) -> Callable[[Outputs, np.ndarray], float]:
    """Corpus-level error rate: errors summed over examples / reference units summed (not a mean of ratios)."""

    def rate(o: Outputs, idx: np.ndarray) -> float:
        den = float(np.sum(o[total][idx]))
        return float(np.sum(o[errors][idx]) / den) if den > 0 else float("nan")

    return rate


ACCURACY = PerExampleMetric(
    "accuracy", True, True, _correct, description="fraction of correct predictions (per example 0/1)"
)
ERROR_RATE = PerExampleMetric(
    "error_rate", False, True, _error, description="fraction of wrong predictions (per example 0/1)"
)
F1_MACRO = AggregateMetric(
    "f1_macro",
    True,
    True,
    f1_macro,
    description="macro-averaged F1 over classes",
    ratio=_f1_macro_ratio,
    sensitivity=f1_sensitivity,
)
BALANCED_ACCURACY = AggregateMetric(
    "balanced_accuracy",
    True,
    True,
    balanced_accuracy,
    description="mean per-class recall",
    ratio=_balanced_accuracy_ratio,
    sensitivity=balanced_accuracy_sensitivity,
)
NLL = AggregateMetric(
    "nll", False, False, _mean_nll, description="mean negative log-likelihood per token (nats)", ratio=_nll_ratio
)
PERPLEXITY = AggregateMetric(
    "perplexity", False, False, _perplexity, description="exp(mean token NLL)", ratio=_nll_ratio, transform="exp"
)
EXACT_MATCH = PerExampleMetric(
    "exact_match",
    True,
    True,
    _exact,
    description="fraction of generations equal to a reference answer (per example 0/1)",
)
# Error rates can exceed 1 (insertions) but are read, and given margins, as fractions: shown in percent.
WER = AggregateMetric(
    "wer",
    False,
    True,
    _error_ratio("word_errors", "ref_words"),
    description="word error rate: word edits / reference words",
    ratio=_error_parts("word_errors", "ref_words"),
)
CER = AggregateMetric(
    "cer",
    False,
    True,
    _error_ratio("char_errors", "ref_chars"),
    description="character error rate: character edits / reference characters",
    ratio=_error_parts("char_errors", "ref_chars"),
)

CLASSIFICATION_METRICS: dict[str, Metric] = {m.name: m for m in (ACCURACY, ERROR_RATE, F1_MACRO, BALANCED_ACCURACY)}


def _per(unit: str, scale: float = 1.0) -> Callable[[Outputs], tuple[np.ndarray, np.ndarray]]:
    def parts(o: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(o["nll"], dtype=np.float64) * scale, np.asarray(o[unit], dtype=np.float64)

    return parts


def _pooled(unit: str, scale: float = 1.0, exp: bool = False) -> Callable[[Outputs, np.ndarray], float]:
    def value(o: Outputs, idx: np.ndarray) -> float:
        den = float(np.sum(o[unit][idx]))
        mean = float(np.sum(o["nll"][idx]) * scale / den) if den > 0 else float("nan")
        return float(np.exp(mean)) if exp else mean

    return value


# lm-evaluation-harness's normalised perplexities of loglikelihood_rolling tasks (wikitext): per word, per byte
WORD_PERPLEXITY = AggregateMetric(
    "word_perplexity",
    False,
    False,
    _pooled("nwords", exp=True),
    ratio=_per("nwords"),
    transform="exp",
    description="exp(total NLL / total words)",
)
BYTE_PERPLEXITY = AggregateMetric(
    "byte_perplexity",
    False,
    False,
    _pooled("nbytes", exp=True),
    ratio=_per("nbytes"),
    transform="exp",
    description="exp(total NLL / total UTF-8 bytes)",
)
BITS_PER_BYTE = AggregateMetric(
    "bits_per_byte",
    False,
    False,
    _pooled("nbytes", 1 / np.log(2)),
    ratio=_per("nbytes", 1 / np.log(2)),
    description="total NLL in bits / total UTF-8 bytes",
)
LM_METRICS: dict[str, Metric] = {m.name: m for m in (PERPLEXITY, NLL, WORD_PERPLEXITY, BYTE_PERPLEXITY, BITS_PER_BYTE)}
GENERATION_METRICS: dict[str, Metric] = {m.name: m for m in (EXACT_MATCH,)}
SPEECH_METRICS: dict[str, Metric] = {m.name: m for m in (WER, CER)}
