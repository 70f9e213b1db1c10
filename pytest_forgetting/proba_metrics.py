"""Metrics of the class probabilities a classification task keeps (``outputs["proba"]``).

Classification tasks store, besides the predicted class, the softmax of the logits in the task's
class ids (``proba``: (N, K) float32, K >= the number of classes; a model output that is no class of
the task adds to no column). These metrics read it; each matches scikit-learn on the same
predictions (``tests/engine/test_proba_metrics.py``):

- ``log_loss``: per example, the negative log-probability of the gold class (clipped at float64
  eps, as scikit-learn does) -- a mean of per-example terms, compared with the paired bootstrap.
- ``brier``: per example, the squared distance between the probability vector and the one-hot gold
  class, summed over classes; for two classes ``(p_1 - y)^2`` (scikit-learn's binary definition,
  half the sum). Also per example.
- ``auc``: ROC AUC; binary (K = 2) on ``proba[:, 1]``, otherwise macro one-vs-rest over the classes
  that occur in the labels with both positives and negatives (scikit-learn ``roc_auc_score(...,
  multi_class="ovr", average="macro")`` on those classes). Aggregate.
- ``ece``: expected calibration error with equal-mass bins: the examples sorted by confidence
  (the highest class probability, ties in example order) are cut into ``ECE_BINS`` = 15 contiguous
  bins of sizes as equal as possible (``numpy.array_split``; fewer bins when there are fewer
  examples); ECE = sum over bins of |sum(correct - confidence)| / n, where an example is correct
  when its most probable class is the gold one. Aggregate, lower is better.
- ``precision_macro`` / ``recall_macro``: macro average over the classes present in the labels or
  the predictions, 0 for a class with a zero denominator (scikit-learn ``zero_division=0``).
  Aggregate. ``precision_per_class`` / ``recall_per_class`` give the per-class values.

Pure numpy: importing this module imports neither torch nor scipy.
"""

from __future__ import annotations

import numpy as np

from .metrics import AggregateMetric, Metric, Outputs, PerExampleMetric, _codes, _n_present, _others_min, _pred_keys
from .stats import Sensitivity

#: number of equal-mass bins of ``ece``
ECE_BINS = 15


def _proba(o: Outputs) -> np.ndarray:
    p = np.asarray(o["proba"], dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be (examples, classes), got shape {p.shape}")
    return p


def _labels(o: Outputs) -> np.ndarray:
    return np.asarray(o["label"]).astype(np.int64)


def log_loss_per_example(o: Outputs) -> np.ndarray:
    p, y = _proba(o), _labels(o)
    gold = p[np.arange(len(y)), y]
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(gold, eps, 1.0))


def brier_per_example(o: Outputs) -> np.ndarray:
    p, y = _proba(o), _labels(o)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    sq = np.sum((p - onehot) ** 2, axis=1)
    return sq / 2.0 if p.shape[1] == 2 else sq


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half); NaN without both positives and negatives."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(o: Outputs, idx: np.ndarray) -> float:
    p, y = _proba(o)[idx], _labels(o)[idx]
    if p.shape[1] == 2:
        return binary_auc(y == 1, p[:, 1])
    values = [binary_auc(y == k, p[:, k]) for k in np.unique(y)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def ece(o: Outputs, idx: np.ndarray, n_bins: int = ECE_BINS) -> float:
    p, y = _proba(o)[idx], _labels(o)[idx]
    n = len(y)
    if n == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    gap = correct[order] - conf[order]
    total = 0.0
    for part in np.array_split(gap, min(n_bins, n)):
        total += abs(float(part.sum()))
    return total / n


def _counts(o: Outputs, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted, support, present) per class id over the union of labels and predictions."""
    y = _labels(o)[idx]
    pr = np.asarray(o["pred"]).astype(np.int64)[idx]
    k = int(max(y.max(initial=-1), pr.max(initial=-1))) + 1
    tp = np.bincount(y[y == pr], minlength=k).astype(np.float64)
    support = np.bincount(y, minlength=k).astype(np.float64)
    predicted = np.bincount(pr, minlength=k).astype(np.float64)
    return tp, predicted, support, (support + predicted) > 0


def precision_per_class(o: Outputs, idx: np.ndarray | None = None) -> dict[int, float]:
    """Precision of every class id present in the labels or predictions (0 when never predicted)."""
    idx = np.arange(len(o["label"])) if idx is None else idx
    tp, predicted, _, present = _counts(o, idx)
    val = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return {int(k): float(val[k]) for k in np.flatnonzero(present)}


def recall_per_class(o: Outputs, idx: np.ndarray | None = None) -> dict[int, float]:
    """Recall of every class id present in the labels or predictions (0 for a class without examples)."""
    idx = np.arange(len(o["label"])) if idx is None else idx
    tp, _, support, present = _counts(o, idx)
    val = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return {int(k): float(val[k]) for k in np.flatnonzero(present)}


def precision_macro(o: Outputs, idx: np.ndarray) -> float:
    values = list(precision_per_class(o, idx).values())
    return float(np.mean(values)) if values else 0.0


def recall_macro(o: Outputs, idx: np.ndarray) -> float:
    values = list(recall_per_class(o, idx).values())
    return float(np.mean(values)) if values else 0.0


# -- sensitivities: how far each aggregate can move when a fraction of the examples changes ----
# (stats.Sensitivity; conditional on the eval set's class supports, with the class set fixed)


def _proba_keys(base: Outputs, tuned: Outputs) -> tuple[np.ndarray, np.ndarray]:
    return _proba(base), _proba(tuned)


def auc_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """Strata = labels. AUC_k = P(score of a positive > score of a negative) (ties half): changing
    a fraction g of the positives' (or the negatives') distribution moves it by at most g, so
    label j changing by g_j moves AUC_k by g_j [j = k] + g_j w_j / (1 - w_k) [j != k]; the
    binary AUC has one k. Averaged over the K classes scored."""
    _, codes = _codes(_labels(base))
    w = np.bincount(codes).astype(np.float64) / codes.size
    if _proba(base).shape[1] == 2:
        slope = np.ones(w.size)
    else:
        scored = w < 1.0  # a class with positives and negatives
        ratio = np.where(scored, w[:, None] / np.where(scored, 1.0 - w, 1.0)[None, :], 0.0)
        np.fill_diagonal(ratio, 0.0)
        slope = (scored + (ratio * scored[None, :]).sum(axis=1)) / max(int(scored.sum()), 1)
    kb, kt = _proba_keys(base, tuned)
    return Sensitivity(codes, slope, kb, kt)


def ece_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """One stratum. With B equal-mass bins, changing a fraction g of the examples moves every
    unchanged example's rank by at most g, so at most g crosses each of the B - 1 inner bin
    edges (two bins' sums move by <= g each, |correct - confidence| <= 1), and the removed and
    added mass moves the sums by <= 2 g: |ECE change| <= 2 g B."""
    n = len(_labels(base))
    kb, kt = _proba_keys(base, tuned)
    return Sensitivity(np.zeros(n, dtype=np.int64), np.array([2.0 * ECE_BINS]), kb, kt)


def recall_macro_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """Strata = labels: label j changing by g_j moves recall_j by at most g_j; classes only ever
    predicted have recall 0. Averaged over the classes in the labels or predictions."""
    _, codes = _codes(_labels(base))
    k = int(codes.max()) + 1
    kb, kt = _pred_keys(base, tuned)
    return Sensitivity(
        codes, np.full(k, 1.0 / _n_present(base)), kb, kt, slope_tuned=np.full(k, 1.0 / _n_present(tuned))
    )


def precision_macro_sensitivity(base: Outputs, tuned: Outputs) -> Sensitivity:
    """Strata = the base model's predictions (conditional on them). Precision_k = t_k / p_k: when
    a mass a leaves and b enters the predictions of k, |change| <= (a + b) / p_k (base share
    p_k), so a fraction g_u of the base's class-u predictions changing moves it by at most
    g_u (1 + p_u / min_{v != u} p_v) / K. A class the base never predicts has precision 0 and
    can only improve, by up to 1 (``gain_jump``). No reference rule (the strata are an output)."""
    classes, codes = _codes(np.asarray(base["pred"]).astype(np.int64))
    w = np.bincount(codes).astype(np.float64) / codes.size
    k = _n_present(base)
    slope = (1.0 + np.where(np.isfinite(_others_min(w)), w / _others_min(w), 0.0)) / k
    unpredicted = k - classes.size
    kb, kt = _pred_keys(base, tuned)
    return Sensitivity(
        codes, slope, np.c_[kb, _labels(base)], np.c_[kt, _labels(tuned)], gain_jump=unpredicted / k, reference=False
    )


LOG_LOSS = PerExampleMetric(
    "log_loss", False, False, log_loss_per_example, description="mean negative log-probability of the gold class (nats)"
)
BRIER = PerExampleMetric(
    "brier",
    False,
    True,
    brier_per_example,
    score_range=(0.0, 2.0),  # sum of squares of two unit vectors' difference
    description="mean squared distance of the class probabilities to the one-hot gold class",
)
AUC = AggregateMetric(
    "auc",
    True,
    True,
    auc,
    description="ROC AUC (binary; macro one-vs-rest for more classes)",
    sensitivity=auc_sensitivity,
)
ECE = AggregateMetric(
    "ece",
    False,
    True,
    ece,
    description=f"expected calibration error, {ECE_BINS} equal-mass confidence bins",
    sensitivity=ece_sensitivity,
)
PRECISION_MACRO = AggregateMetric(
    "precision_macro",
    True,
    True,
    precision_macro,
    description="macro-averaged precision",
    sensitivity=precision_macro_sensitivity,
)
RECALL_MACRO = AggregateMetric(
    "recall_macro", True, True, recall_macro, description="macro-averaged recall", sensitivity=recall_macro_sensitivity
)

PROBA_METRICS: dict[str, Metric] = {m.name: m for m in (LOG_LOSS, BRIER, AUC, ECE, PRECISION_MACRO, RECALL_MACRO)}
