"""Fairness as retention: has the gap between the best and the worst slice widened?

The gap of a model is ``G = max_s m_s - min_s m_s`` over slices s (groups of examples, or true
classes), where ``m_s`` is the mean of a per-example metric on slice s (accuracy: the fraction
right). ``retains(..., max_gap_increase=g)`` asks whether ``G_tuned - G_base <= g``; base and
tuned are evaluated on the same examples, so each slice is a paired comparison, and the slices
are independent samples.

The statistic is a max minus a min, which is not smooth: when slices are close, which slice is
the best flips from one resample to the next and a percentile bootstrap of the gap under-covers
(it is biased upwards at no true change). This module therefore uses simultaneous, exact
bounds per slice and propagates them through the max/min, which is valid whatever the slices'
levels (a conservative union bound: Bonferroni over the slices, so the per-slice bounds run at
alpha / 2K and alpha / 4K and the check keeps a wide safety margin):

- per slice s, the change ``d_s = m_tuned_s - m_base_s`` and, for the FAIL side, the base level
  ``x_s = m_base_s``. For 0/1 metrics ``d_s = p21 - p12`` (positive minus negative flip rate), so
  its bounds are the paired score (Tango) bounds of the 0/1 path of ``stats`` (continuity-corrected
  on the FAIL side, exact when nothing flipped); ``x_s`` gets an exact Clopper-Pearson bound. For
  continuous per-example metrics the bounds come from :func:`pytest_forgetting.stats.compare_scores`
  on the slice (its studentised bootstrap).
- PASS side (upper bound): ``G_t - G_b <= max_s d_s - min_s d_s`` for any levels (take the base's
  own best and worst pair in G_t), so ``U = max_s upper(d_s) - min_s lower(d_s)``, the 2K bounds
  each at ``alpha / 2K`` (Bonferroni). PASS when ``U < margin``.
- FAIL side (lower bound): for every pair (a, b), ``G_t - G_b >= d_a - d_b - (max x - x_a) -
  (x_b - min x)``; with simultaneous bounds on every d and x (4K bounds, each at
  ``fail_alpha / 4K``) the largest such lower bound over the pairs is valid. When the best and
  the worst base slices are clearly apart the two penalties are 0 and this is the paired change of
  that pair's gap. FAIL when ``L > margin``.

The smallest slice size at which two identical models PASS is :func:`min_n_per_slice`.
``benchmarks/gap_calibration.py`` measures the false-PASS / false-FAIL rates at the margin (n per
slice 50..1000, 2-10 slices, close and far slices); ``tests/test_gap.py`` keeps a fast version.

Pure: numpy and the standard library (the Clopper-Pearson quantiles are those of ``stats``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import stats
from .stats import paired as _paired
from .stats import special as _special
from .stats import validation as _validation
from .stats import verdict as _verdict


@dataclass(frozen=True)
class GapComparison:
    """The verdict on the change of the best-minus-worst slice gap."""

    verdict: str  # "pass" | "fail" | "inconclusive"
    base_gap: float
    tuned_gap: float
    increase: float  # tuned_gap - base_gap
    ci_low: float  # lower bound (at fail_alpha) of the increase
    ci_high: float  # upper bound (at alpha) of the increase
    margin: float
    best: str  # the tuned model's best and worst slice (base's when the tuned model's are tied)
    worst: str
    n: int
    n_slices: int
    min_slice_n: int
    method: str
    reason: str


def _as_1d(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return arr


@functools.lru_cache(maxsize=65536)
def _cp_upper(k: float, n: float, a: float) -> float:
    return _special._cp_upper(k, n, a)


@functools.lru_cache(maxsize=65536)
def _cp_lower(k: float, n: float, a: float) -> float:
    return _special._cp_lower(k, n, a)


#: how a slice's change is bounded: "tango" (the paired score bounds of the 0/1 path, stats) or
#: "exact" (Clopper-Pearson of both flip rates, Bonferroni over the two; more conservative)
_CHANGE = "tango"


@functools.lru_cache(maxsize=65536)
def _tango(b: float, c: float, n: float, a: float) -> tuple[float, float]:
    return _paired._paired_bounds(b, c, n, a, a)


def _binary_bounds(
    bs: np.ndarray, ts: np.ndarray, a_change: float, a_level: float
) -> tuple[float, float, float, float]:
    """(lower d, upper d, lower x, upper x) of one slice of 0/1 scores; each bound at its level."""
    n = float(len(bs))
    b = float(np.sum((bs == 1) & (ts == 0)))  # negative flips
    c = float(np.sum((bs == 0) & (ts == 1)))  # positive flips
    if _CHANGE == "tango":  # the paired score interval of the 0/1 path (stats), each side at its level
        low, high = _tango(b, c, n, a_change)
        d_lo, d_hi = -high, -low
    else:
        h = a_change / 2.0  # d = p21 - p12: each flip rate bounded at half the level
        d_hi = _cp_upper(c, n, h) - _cp_lower(b, n, h)
        d_lo = _cp_lower(c, n, h) - _cp_upper(b, n, h)
    k = float(np.sum(bs))
    return d_lo, d_hi, _cp_lower(k, n, a_level), _cp_upper(k, n, a_level)


def _continuous_bounds(
    bs: np.ndarray, ts: np.ndarray, a_change: float, a_level: float, seed: int
) -> tuple[float, float, float, float]:
    """The same from the paired studentised bootstrap of ``stats`` (INCONCLUSIVE-safe: +-inf when it refuses)."""
    n_boot = max(2000, _validation._min_boot(min(a_change, a_level)))
    ch = stats.compare_scores(
        bs, ts, max_drop=0.0, alpha=a_change, fail_alpha=a_change, seed=seed, n_boot=n_boot, n_needed=False
    )
    lv = stats.compare_scores(
        bs, np.zeros_like(bs), max_drop=0.0, alpha=a_level, fail_alpha=a_level, seed=seed, n_boot=n_boot, n_needed=False
    )
    # compare_scores bounds the drop base - tuned: the change is its negative; the level is the drop to 0
    return -ch.ci_high, -ch.ci_low, lv.ci_low, lv.ci_high


def min_n_per_slice(margin: float, n_slices: int, alpha: float = 0.05) -> int:
    """Smallest equal slice size at which two models that agree on every example PASS (0/1 metric)."""
    if not (margin > 0 and n_slices >= 2):
        raise ValueError("margin must be > 0 and there must be at least 2 slices")
    # with no flip the change of a slice is bounded exactly by +-(1 - a^(1/n)) at a = alpha / 2K
    a = alpha / (2 * n_slices) / (2.0 if _CHANGE == "exact" else 1.0)
    # 2 * (1 - a^(1/n)) < margin  <=>  n > ln(a) / ln(1 - margin / 2)
    n = math.floor(math.log(a) / math.log1p(-margin / 2.0)) + 1
    while 2.0 * _cp_upper(0.0, n, a) >= margin:  # floating safety
        n += 1
    return n


def compare_gap(
    base: Any,
    tuned: Any,
    groups: Any,
    *,
    margin: float,
    alpha: float = 0.05,
    fail_alpha: float | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> GapComparison:
    """Decide whether the best-minus-worst slice gap widened by more than ``margin`` (see the module doc).

    ``base`` / ``tuned``: aligned per-example scores (0/1 or continuous); ``groups``: the slice of
    each example (integer codes, or any values; ``names[code]`` names a code). The gap is direction
    free (|best - worst|), so higher- and lower-is-better metrics are handled alike.
    """
    bs = _as_1d(base, "base")
    ts = _as_1d(tuned, "tuned")
    if bs.shape != ts.shape:
        raise ValueError(f"base and tuned must be aligned: lengths {bs.size} and {ts.size}")
    g = np.asarray(groups)
    if g.shape != bs.shape:
        raise ValueError(f"groups must give one slice per example: {g.size} for {bs.size} examples")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"max_gap_increase must be a finite number >= 0, got {margin!r}")
    a = _validation._check_alpha(alpha)
    af = _validation._check_fail_alpha(fail_alpha, a)
    codes, inverse = np.unique(g, return_inverse=True)
    k = len(codes)
    if names is not None and np.issubdtype(codes.dtype, np.integer):
        labels = [str(names[int(c)]) if 0 <= int(c) < len(names) else str(c) for c in codes]
    else:
        labels = [str(c) for c in codes]
    n = int(bs.size)
    means_b = np.array([bs[inverse == j].mean() for j in range(k)]) if k else np.zeros(0)
    means_t = np.array([ts[inverse == j].mean() for j in range(k)]) if k else np.zeros(0)
    sizes = np.bincount(inverse, minlength=k) if k else np.zeros(0, int)

    def result(verdict: str, lo: float, hi: float, method: str, reason: str) -> GapComparison:
        bg = float(means_b.max() - means_b.min()) if k else 0.0
        tg = float(means_t.max() - means_t.min()) if k else 0.0
        if k:
            # ties between tuned slices are broken by the base's order (a stable "which pair")
            best = int(np.lexsort((-means_b, -means_t))[0])
            worst = int(np.lexsort((means_b, means_t))[0])
        return GapComparison(
            verdict,
            bg,
            tg,
            tg - bg,
            lo,
            hi,
            float(margin),
            labels[best] if k else "",
            labels[worst] if k else "",
            n,
            k,
            int(sizes.min()) if k else 0,
            method,
            reason,
        )

    if k < 2:
        return result(
            "inconclusive",
            -math.inf,
            math.inf,
            "refused",
            f"gap needs at least 2 slices with examples, got {k}: nothing to compare",
        )
    binary = bool(np.isin(bs, (0.0, 1.0)).all() and np.isin(ts, (0.0, 1.0)).all())
    a_pass = a / (2 * k)  # PASS: upper and lower bound of every slice's change
    a_fail = af / (4 * k)  # FAIL: both bounds of every change and every base level
    lo_pass = np.empty(k)
    hi_pass = np.empty(k)
    lo_d = np.empty(k)
    hi_d = np.empty(k)
    lo_x = np.empty(k)
    hi_x = np.empty(k)
    for j in range(k):
        sel = inverse == j
        if binary:
            lo_pass[j], hi_pass[j], _, _ = _binary_bounds(bs[sel], ts[sel], a_pass, a_pass)
            lo_d[j], hi_d[j], lo_x[j], hi_x[j] = _binary_bounds(bs[sel], ts[sel], a_fail, a_fail)
        else:
            lo_pass[j], hi_pass[j], _, _ = _continuous_bounds(bs[sel], ts[sel], a_pass, a_pass, seed + j)
            lo_d[j], hi_d[j], lo_x[j], hi_x[j] = _continuous_bounds(bs[sel], ts[sel], a_fail, a_fail, seed + j)
    method = ("tango-union" if _CHANGE == "tango" else "exact-union") if binary else "bootstrap-union"
    upper = float(hi_pass.max() - lo_pass.min())
    lower = -math.inf
    for i in range(k):
        others_hi = np.delete(hi_x, i).max()
        pen_best = max(0.0, float(others_hi - lo_x[i]))  # how far slice i may be below the true best
        for j in range(k):
            if i == j:
                continue
            pen_worst = max(0.0, float(hi_x[j] - np.delete(lo_x, j).min()))  # how far j may be above the true worst
            lower = max(lower, float(lo_d[i] - hi_d[j] - pen_best - pen_worst))
    if not (math.isfinite(upper) or math.isfinite(lower)):
        return result("inconclusive", lower, upper, method, "no valid bound on the slices at this n")
    verdict = _verdict._decide(lower, upper, float(margin))
    return result(verdict, lower, upper, method, "")


def describe(cmp: GapComparison, what: str = "slice") -> str:
    """One line for a reason or a failure message, naming the two slices."""
    head = (
        f"{what} gap {cmp.best} vs {cmp.worst}: {cmp.base_gap:.3f} -> {cmp.tuned_gap:.3f} "
        f"(increase {cmp.increase:+.3f} [{cmp.ci_low:+.3f}, {cmp.ci_high:+.3f}], budget {cmp.margin:g}): {cmp.verdict}"
    )
    if cmp.verdict == "inconclusive" and cmp.method in ("tango-union", "exact-union") and cmp.ci_high >= cmp.margin:
        need = min_n_per_slice(cmp.margin, cmp.n_slices) if cmp.margin > 0 else None
        if need is not None and cmp.min_slice_n < need:
            head += (
                f"; even an unchanged model needs >= {need} examples in every slice (smallest has {cmp.min_slice_n})"
            )
    return head + (f" ({cmp.reason})" if cmp.reason else "")


# -- calibration by simulation ---------------------------------------------------------------------


def simulate(
    levels_base: Sequence[float],
    levels_tuned: Sequence[float],
    n_per_slice: int,
    *,
    margin: float,
    churn: float = 0.1,
    reps: int = 400,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Verdict rates of :func:`compare_gap` on 0/1 data with the given true slice accuracies.

    Each slice's pairs are drawn with the given base and tuned accuracies and a probability
    ``churn`` of a negative flip on top of the forced ones (so that both kinds of flips occur).
    Returns the fractions of PASS and FAIL and the true gap increase.
    """
    rng = np.random.default_rng(seed)
    lb = np.asarray(levels_base, float)
    lt = np.asarray(levels_tuned, float)
    true_inc = float((lt.max() - lt.min()) - (lb.max() - lb.min()))
    k = len(lb)
    groups = np.repeat(np.arange(k), n_per_slice)
    # cell probabilities per slice: p11, p10 (neg flip), p01 (pos flip), p00
    p10 = np.maximum(0.0, lb - lt) + churn * np.minimum(lb, 1 - lt)
    p01 = p10 - (lb - lt)
    p11 = lb - p10
    p00 = 1.0 - p11 - p10 - p01
    cells = np.stack([p11, p10, p01, p00], axis=1)
    if (cells < -1e-12).any():
        raise ValueError("levels and churn give negative cell probabilities")
    cells = np.clip(cells, 0, None)
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    for _ in range(reps):
        bs = np.empty(k * n_per_slice)
        ts = np.empty(k * n_per_slice)
        for j in range(k):
            draw = rng.choice(4, size=n_per_slice, p=cells[j] / cells[j].sum())
            sl = slice(j * n_per_slice, (j + 1) * n_per_slice)
            bs[sl] = (draw <= 1).astype(float)
            ts[sl] = ((draw == 0) | (draw == 2)).astype(float)
        counts[compare_gap(bs, ts, groups, margin=margin, alpha=alpha).verdict] += 1
    return {"pass": counts["pass"] / reps, "fail": counts["fail"] / reps, "true_increase": true_inc, "reps": reps}
