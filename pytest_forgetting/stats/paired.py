"""The statistical decision core of pytest-forgetting (pure: numpy and the standard library, no I/O, no torch, no scipy).

The question every marker asks is *non-inferiority on paired data*: did the fine-tuned model
lose more than ``margin`` of a metric its base model had, measured on the **same** examples?
Every verdict is made from two one-sided confidence bounds of the drop:

* PASS          -- the upper bound at level ``alpha`` is below the margin;
* FAIL          -- the lower bound at level ``fail_alpha`` (``alpha`` unless the caller splits
                   it over several FAIL claims of one check) is above the margin;
* INCONCLUSIVE  -- neither, or no method here is valid at this n; the message says which, and
                   how many examples would settle it with probability 0.8 under the observed rates.

A bound that equals the margin within floating-point tolerance proves nothing.

Which bound, per path (the README section "How a verdict is decided" states the guarantees):

* 0/1 scores, absolute drop: Tango's (1998) score bounds for a difference of paired
  proportions with a continuity correction of one count on each side, and at least the exact
  Clopper-Pearson bound of the negative-flip rate when no example flipped the other way (so
  "no flips at all" passes only where it is exactly safe: ``min_n_to_pass``); mirrored on the
  FAIL side. Exact enumeration keeps both error rates <= alpha (see ``_CC_FAIL``).
* 0/1 scores, relative drop: the score interval for the ratio of paired proportions
  (Nam and Blackwelder 2002; Tang, Tang and Chan 2003), restricted maximum likelihood under the
  null solved exactly (KKT conditions, zero cells included); a continuity correction on the
  FAIL side and an exact bound when nothing flipped.
* means of continuous scores (absolute or relative), ratio statistics (perplexity = exp(sum NLL /
  sum tokens), WER = errors / words, entity F1) and macro averages of ratios (macro-F1, balanced
  accuracy): a seeded paired *studentised* bootstrap (bootstrap-t) whose standard error in
  every resample is the delta-method (linearised) one. Never decided on a resample
  distribution with no spread, below 100 examples, or (macro averages) with a class seen
  fewer than 10 times; bounded aggregates also follow ``min_n_to_pass``. From 50,000 examples
  (``_ANALYTIC_MIN_N``), where the resamples would draw an index per example (scores that rarely
  repeat), the interval the bootstrap-t approximates, computed from its one-term Edgeworth
  expansion instead (:func:`_edgeworth_bounds`, method "edgeworth-t"; Hall 1992).
* any other aggregate statistic (a bare callable): a seeded paired BCa bootstrap (Efron 1987),
  acceleration from a (grouped) jackknife.
* bounded aggregates given a :class:`Sensitivity` (macro-F1, balanced accuracy, macro
  precision / recall, AUC, ECE): when no example changed, or when every stratum's examples are
  identical (a bootstrap without spread, e.g. a collapsed head), exact bounds from the
  stratified no-change rule (:func:`_stratified_upper`), conditional on the class supports.

Budgets: per-class drops FAIL on exact bounds (Clopper-Pearson of both flip rates, Bonferroni
over classes); the negative-flip-rate budget uses Clopper-Pearson bounds. The beta quantiles
are computed here (continued fraction of the regularised incomplete beta, then bisection) and
checked against scipy in the tests.

References: T. Tango (1998), Statistics in Medicine 17, 891-908. J. Nam and W. C. Blackwelder
(2002), Statistics in Medicine 21, 689-699. N.-S. Tang, M.-L. Tang and I. S. F. Chan (2003),
Biometrics 59, 1030-1037. C. J. Clopper and E. S. Pearson (1934), Biometrika 26, 404-413.
B. Efron (1987), JASA 82, 171-185. P. Hall (1992), The Bootstrap and Edgeworth Expansion, Springer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from . import bounded as _bounded

__all__ = [
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "Comparison",
    "Budget",
    "Ratio",
    "Sensitivity",
    "tango_interval",
    "ratio_score_interval",
    "wilson_bounds",
    "clopper_pearson",
    "min_n_to_pass",
    "compare_scores",
    "compare_statistic",
    "class_drops",
    "nfr_budget",
    "combine_verdicts",
]

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

#: Severity order used by :func:`combine_verdicts` (higher = worse).
_SEVERITY = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

#: Beyond this many examples we stop pretending an eval set could be collected.
_N_NEEDED_CAP = 10**9

#: ``n_needed`` is the n at which the check settles with at least this probability.
_SETTLE_PROB = 0.8

#: Bootstrap index matrices are generated in chunks of at most this many entries, so memory
#: stays bounded (~16 MB of indices) whatever n and n_boot are.
_CHUNK_ENTRIES = 2_000_000

#: Resamples are drawn as one multinomial vector of counts over the groups of identical examples
#: (identical per-example inputs) when there are at most n / _MULTINOMIAL_RATIO groups: the counts
#: per group of n indices drawn uniformly with replacement are exactly Multinomial(n, sizes / n),
#: so the resampling distribution is the same, for O(groups) work per resample instead of O(n)
#: (a multinomial costs ~8x more per group than an index per example). Macro-F1's examples fall
#: into at most K^3 groups (label, base prediction, tuned prediction), WER's and entity F1's into
#: a few hundred (small counts); per-example NLL rarely repeats and keeps the index matrices.
_MULTINOMIAL_RATIO = 8

#: From this many examples, a bootstrap-t whose resamples would draw an index per example (scores
#: that rarely repeat: per-example NLL, continuous scores, perplexity's token sums) is replaced by
#: the interval it approximates, computed analytically (:func:`_edgeworth_bounds`: the one-term
#: Edgeworth / Cornish-Fisher correction of the studentised statistic, Hall 1992). Both are
#: second-order accurate; they differ by O(1/n) in the t quantiles, under the bootstrap's own
#: Monte-Carlo error (~0.05 SE) at this n (tests/test_large_n.py). Resampling costs O(n) per
#: resample (2,000 x n draws: ~2 s at n = 1e5, ~30 s at 1e6), the expansion one pass over the data.
#: Paths whose examples repeat (macro-F1, WER, entity F1) resample group counts, cheap at any n,
#: and keep the bootstrap.
_ANALYTIC_MIN_N = 50_000

#: The analytic interval is used only while its correction stays small: the skewness shift of the
#: t quantile at most this many standard errors, and the left-out O(1/n) terms ((skewness^2 +
#: |excess kurtosis|) / n) at most _EDGEWORTH_MAX_SECOND; beyond either (very skewed or heavy-tailed
#: scores) the bootstrap-t decides, however long it takes.
_EDGEWORTH_MAX_SHIFT = 0.5
_EDGEWORTH_MAX_SECOND = 0.05

#: Tango's statistic is infinite at the edges of [-1, 1]; clip it so the root finder only ever
#: sees finite numbers (any value this large is far beyond any z we use).
_Z_CLIP = 1e8

#: A bound within this (relative) distance of the margin is a tie: it proves nothing. Float
#: rounding alone makes mean(0.5) - mean(0.48) exceed 0.02.
_TIE_RTOL = 1e-9

#: Continuity corrections (in counts) of the 0/1 score bounds: the bound that backs a FAIL and
#: the one that backs a PASS. Chosen by exact enumeration over the whole nuisance range
#: (margins 0.02 / 0.05 / 0.1, n up to 500; tests/test_calibration_fast.py keeps a few cells):
#: plain Tango reaches 0.060 false PASS and 0.061 false FAIL; 0.5 on the FAIL side alone still
#: leaves 0.061 (n=50, margin 0.1, few positive flips); 1.0 on both sides keeps every computed
#: cell <= alpha (max 0.0493), at a cost of about 0.03 in PASS power at n=1000.
_CC_FAIL = 1.0
_CC_PASS = 1.0

#: The bootstrap paths decide only from this many examples. Below it a few examples that carry
#: the whole drop are too often absent from the sample: with 5 % of the examples forgotten badly,
#: the studentised bootstrap false-PASSes 0.076 at n = 50 and <= 0.053 from n = 100, and relative
#: perplexity 0.127 at n = 50 and 0.043 at n = 100 (1,000 simulations each).
_MIN_BOOTSTRAP_N = 100

#: Scores with no declared range (per-example NLL or log-loss, perplexity's token sums, any
#: unbounded metric) are decided by the bootstrap only from this many examples. No finite n makes
#: a test of an unbounded mean valid for every distribution (Bahadur and Savage 1956): a drop
#: carried by a few examples is missing from a sample of n with probability (1 - p)^n, and then
#: the rest of the sample looks like an improvement. From 1,000 examples the studentised bootstrap
#: keeps both error rates within alpha + 3 SE in every simulated case where the drop is carried by
#: at least 0.5 % of the examples (n p >= 5; docs/calibration.md: 0.5-2 % of the examples 4-16
#: nats worse or better, perplexity with long-tailed lengths); at 300 it reaches 0.14-0.26. A
#: declared ``score_range`` gives bounds valid at every n instead.
_MIN_UNBOUNDED_N = 1000

#: A macro average (macro-F1, balanced accuracy) decides only when every class it averages has
#: at least this much denominator mass (F1: support + predictions) for both models: a class seen
#: a handful of times makes its ratio, and the delta-method error of the average, unreliable
#: (10 imbalanced classes with the rarest losing recall: false FAIL 0.125 at n = 100).
_MIN_COLUMN_MASS = 10.0

#: Simulated draws used to check the settle probability behind n_needed on the count paths.
_SETTLE_DRAWS = 1000


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Outcome of one paired base-vs-tuned comparison.

    ``drop`` is signed so that positive always means *worse* (base - tuned for
    higher-is-better metrics, tuned - base for lower-is-better ones; divided by ``|base|``
    when ``relative``). ``ci_high`` is the one-sided upper bound at ``alpha`` (it backs a PASS),
    ``ci_low`` the one-sided lower bound at ``fail_alpha`` (it backs a FAIL); with equal alphas
    they are the ends of a two-sided ``1 - 2*alpha`` interval. ``margin`` is the largest
    tolerated drop (negative for "must improve by at least g"). ``n_needed`` is the eval-set
    size at which the same rates would settle the check with probability ``settle_prob``.
    """

    verdict: str
    n: int
    base: float
    tuned: float
    drop: float
    ci_low: float
    ci_high: float
    margin: float
    relative: bool
    alpha: float
    higher_is_better: bool
    method: str
    nfr: float | None
    pfr: float | None
    n_needed: int | None
    reason: str
    fail_alpha: float | None = None
    settle_prob: float | None = None


@dataclass(frozen=True)
class Budget:
    """One secondary budget (per-class recall drop, negative-flip rate) and its verdict.

    ``value`` is the observed quantity; ``ci_low``/``ci_high`` are the bounds the verdict was
    decided on. For :func:`class_drops` the lower bound is exact and Bonferroni-corrected over
    the classes (it backs a FAIL, and "some class regressed" is a union of K claims) while the
    upper bound is not corrected (a PASS needs every class to pass, an intersection).
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    limit: float
    verdict: str
    n: int


class Ratio(NamedTuple):
    """An aggregate metric written as a (macro average of) ratio(s) of per-example sums.

    For each model, ``value = transform(mean_k sum_i num[i, k] / sum_i den[i, k])`` over the
    columns k whose denominator is positive on the whole eval set. 1-D arrays are one column.
    Examples: perplexity (num = token NLL per example, den = tokens, transform "exp"), WER
    (num = word errors, den = reference words), entity F1 (num = 2 tp, den = predicted + gold
    entities, per model), macro-F1 (one column per class: num = 2 tp, den = support +
    predicted), balanced accuracy (num = hits, den = support). Passing it to
    :func:`compare_statistic` turns on the studentised bootstrap with a delta-method standard
    error in every resample.
    """

    num_base: Any
    den_base: Any
    num_tuned: Any
    den_tuned: Any
    transform: str = "identity"
    #: the denominators do not depend on the model (tokens, reference words, class support);
    #: False for F1, whose denominators count predictions. Used only to bound the metric when
    #: no example changed.
    den_fixed: bool = False


class Sensitivity(NamedTuple):
    """How far a bounded aggregate metric can move when some examples change (an exact rule).

    Examples are split into strata (``strata``: codes 0..S-1, e.g. the label). ``slope[s]`` is a
    Lipschitz constant: if a fraction g_s of stratum s's population changes its contribution
    for one model, that model's metric moves by at most ``sum_s slope[s] * g_s`` (plus
    ``gain_jump`` on the improving side only, for components that can jump, such as the
    precision of a class the base never predicts). ``base_key`` / ``tuned_key`` are (n, d)
    per-example contributions: an example *changed* when its rows differ. When none changed,
    the examples of stratum s are n_s independent draws, so ``P(no change) = prod (1 - g_s)^n_s``
    and the drop is at most the largest ``sum slope * g`` that keeps this >= alpha (exact,
    :func:`_stratified_upper`). When ``reference`` is True and every stratum's examples are
    identical (one row per stratum and model), the same rule bounds how far each model's
    population value can be from the sample's own value (both models: the slopes add).
    The guarantee is conditional on the strata's mix (the eval set's class supports).
    """

    strata: Any
    slope: Any
    base_key: Any
    tuned_key: Any
    slope_tuned: Any = None
    gain_jump: float = 0.0
    reference: bool = True


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: float, what: str = "alpha") -> float:
    """Reject error rates that make no sense for a one-sided bound (and NaN)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"{what} must be in (0, 0.5), got {alpha!r}")
    return a


def _check_fail_alpha(fail_alpha: float | None, alpha: float) -> float:
    return alpha if fail_alpha is None else _check_alpha(fail_alpha, "fail_alpha")


def _check_margin(value: float, what: str) -> float:
    """Margins and limits must be finite numbers; NaN would silently make every test inconclusive."""
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(m):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return m


def _min_boot(alpha: float) -> int:
    """Fewest resamples for a one-sided bound at alpha: at least 5 replicates beyond it."""
    return max(100, math.ceil(5.0 / alpha - 1e-9))


def _check_n_boot(n_boot: Any, alphas: Sequence[float]) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    need = _min_boot(min(alphas))
    if n_boot < need:
        raise ValueError(
            f"n_boot={int(n_boot)} is too few resamples for a one-sided bound at "
            f"alpha={min(alphas):g}: use at least {need}"
        )
    return int(n_boot)


def _as_scores(x: Any, what: str) -> np.ndarray:
    """Turn per-example scores into a finite 1-D float array or say clearly why not."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} scores must be numeric, got {type(x).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} scores are empty: nothing to compare")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} scores contain {int(bad.sum())} non-finite value(s) (NaN/Inf), "
            f"first at index {first}"
        )
    return arr


def _as_pair(base: Any, tuned: Any) -> tuple[np.ndarray, np.ndarray]:
    b = _as_scores(base, "base")
    t = _as_scores(tuned, "tuned")
    if b.shape != t.shape:
        raise ValueError(
            f"base and tuned scores must be aligned (same examples, same order): "
            f"got lengths {b.size} and {t.size}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(b - t).all() and np.isfinite(b.sum()) and np.isfinite(t.sum()))
    if not finite:
        raise ValueError(
            "score range is too large: differences or sums of the scores overflow to infinity "
            "(rescale the scores)"
        )
    return b, t


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


def _as_correct(x: Any, what: str) -> np.ndarray:
    """0/1 (or bool) correctness vector -> bool array."""
    arr = _as_scores(x, what)
    if not _is_binary(arr):
        raise ValueError(f"{what} must contain only 0/1 (correct/wrong) values")
    return arr.astype(bool)


def _as_labels(labels: Any, size: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {lab.shape}")
    if lab.size != size:
        raise ValueError(
            f"base_correct, tuned_correct and labels must be aligned: "
            f"got lengths {size}, {size} and {lab.size}"
        )
    if lab.dtype.kind in "fc":
        bad = np.isnan(lab)
    elif lab.dtype.kind == "O":
        bad = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in lab.tolist()],
                       dtype=bool)
    else:
        bad = np.zeros(lab.size, dtype=bool)
    if bad.any():
        raise ValueError(
            f"labels contain {int(bad.sum())} missing value(s) (NaN/None), first at index "
            f"{int(np.flatnonzero(bad)[0])}: every example needs a class"
        )
    return lab


# --------------------------------------------------------------------------------------------
# Special functions (no scipy at run time)
# --------------------------------------------------------------------------------------------


def _z(alpha: float) -> float:
    # statistics.NormalDist rather than scipy.stats.norm: the same quantile to ~1e-16 (Wichura's
    # AS241), without the ~1.5 s scipy.stats import every pytest run would pay at start-up.
    return NormalDist().inv_cdf(1.0 - alpha)


def _phi(x: float) -> float:
    return NormalDist().cdf(x)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz evaluation).

    The expansion I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1 / (1 + d1 / (1 + d2 / ...)) with
    d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d_{2m} = m (b-m) x / ((a+2m-1)(a+2m));
    it converges fast for x < (a+1) / (a+b+2), which the caller guarantees.
    """
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for coeff in (m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))):
            d = 1.0 + coeff * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coeff / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_quantile(p: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = p, to ~1e-14 relative: safeguarded Newton steps (the derivative is
    the beta density) inside a bisection bracket, since I_x increases in x."""
    lo, hi = 0.0, 1.0
    x = a / (a + b)
    log_norm = _log_beta(a, b)
    for _ in range(300):
        err = _betainc(a, b, x) - p
        if err < 0.0:
            lo = x
        else:
            hi = x
        if err == 0.0 or hi - lo <= 1e-15 * hi:
            break
        log_density = (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_norm
        density = math.exp(log_density) if log_density < 700 else math.inf
        step = x - err / density if 0.0 < density < math.inf else math.nan
        if not lo < step < hi:
            step = 0.5 * (lo + hi)
        if abs(step - x) <= 1e-15 * x:
            x = step
            break
        x = step
    return x


@lru_cache(maxsize=4096)
def _cp_upper(k: float, n: float, alpha: float) -> float:
    """Exact (Clopper-Pearson) one-sided upper bound at alpha of a proportion, k of n."""
    if k >= n:
        return 1.0
    if k <= 0:
        return -math.expm1(math.log(alpha) / n)  # 1 - alpha^(1/n), without cancellation
    return _beta_quantile(1.0 - alpha, k + 1.0, n - k)


@lru_cache(maxsize=4096)
def _cp_lower(k: float, n: float, alpha: float) -> float:
    """Exact (Clopper-Pearson) one-sided lower bound at alpha of a proportion, k of n."""
    if k <= 0:
        return 0.0
    if k >= n:
        return math.exp(math.log(alpha) / n)
    return _beta_quantile(alpha, float(k), n - k + 1.0)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact Clopper-Pearson bounds of a proportion k/n, each one-sided at ``alpha``.

    The bounds are beta quantiles (lower: Beta(k, n-k+1) at alpha; upper: Beta(k+1, n-k) at
    1-alpha), so P(true p > upper) <= alpha exactly for every p, however few examples.
    """
    a = _check_alpha(alpha)
    if isinstance(k, bool) or isinstance(n, bool):
        raise ValueError("k and n must be counts, not booleans")
    kf, nf = float(k), float(n)
    if not (nf > 0 and kf == math.floor(kf) and nf == math.floor(nf)):
        raise ValueError(f"need integer counts with n > 0, got k={k}, n={n}")
    if not 0 <= kf <= nf:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return _cp_lower(kf, nf, a), _cp_upper(kf, nf, a)


# ----- the same functions element-wise over arrays (class_drops decides K classes at once) -----
# Same steps, stopping rules and special cases as the scalar versions; numpy's log / exp may differ
# from the math module's in the last bit, so the bounds agree to ~1e-15 (tested).


def _log_beta_arr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([_log_beta(x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=float)


def _beta_fraction_arr(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`_beta_fraction` element-wise: every entry stops at its own convergence (the
    entries still running are kept packed, so a step costs only their arithmetic)."""
    tiny = 1e-300
    out = np.empty_like(x)
    pos = np.arange(x.size)
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / np.where(np.abs(d) > tiny, d, tiny)
    h = d.copy()
    for m in range(1, 100_000):
        if pos.size == 0:
            break
        step = None
        for coeff in (m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))):
            d = 1.0 + coeff * d
            d = 1.0 / np.where(np.abs(d) > tiny, d, tiny)
            c = 1.0 + coeff / c
            c = np.where(np.abs(c) > tiny, c, tiny)
            step = c * d
            h = h * step
        done = np.abs(step - 1.0) < 1e-15
        if done.any():
            out[pos[done]] = h[done]
            keep = ~done
            pos, a, b, x, c, d, h = pos[keep], a[keep], b[keep], x[keep], c[keep], d[keep], h[keep]
    out[pos] = h
    return out


def _betainc_arr(a: np.ndarray, b: np.ndarray, x: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """:func:`_betainc` element-wise (``log_beta`` = _log_beta(a, b), computed once)."""
    out = np.where(x <= 0.0, 0.0, 1.0)
    inner = (x > 0.0) & (x < 1.0)
    if inner.any():
        ai, bi, xi = a[inner], b[inner], x[inner]
        with np.errstate(divide="ignore"):
            log_front = ai * np.log(xi) + bi * np.log1p(-xi) - log_beta[inner]
        front = np.exp(log_front)
        direct = xi < (ai + 1.0) / (ai + bi + 2.0)
        val = np.empty_like(xi)
        if direct.any():
            val[direct] = front[direct] * _beta_fraction_arr(ai[direct], bi[direct], xi[direct]) / ai[direct]
        flip = ~direct
        if flip.any():
            val[flip] = 1.0 - front[flip] * _beta_fraction_arr(bi[flip], ai[flip], 1.0 - xi[flip]) / bi[flip]
        out[inner] = val
    return out


def _beta_quantile_arr(p: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_beta_quantile` element-wise (one probability p), to the same tolerance (the
    scalar code's bracket, safeguard and stopping rules, plus one: a Newton step that no longer
    moves x ends there). The Newton step is taken on the log of the smaller tail, log I_x - log p
    (p < 1/2, in log x) or log(1 - I_x) - log(1 - p): nearly linear far in a tail, where the plain
    step on I_x - p crawls (the Bonferroni-split levels of class_drops, ~1e-5): 1,000 classes'
    exact bounds in ~8 passes instead of ~60."""
    lo, hi = np.zeros_like(a), np.ones_like(a)
    lower_tail = p < 0.5
    log_tail = math.log(p) if lower_tail else math.log1p(-p)
    x = a / (a + b)
    log_norm = _log_beta_arr(a, b)
    active = np.ones(a.shape, dtype=bool)
    for _ in range(300):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        ai, bi, xi, li, hi_ = a[idx], b[idx], x[idx], lo[idx], hi[idx]
        cdf = _betainc_arr(ai, bi, xi, log_norm[idx])
        err = cdf - p
        li = np.where(err < 0.0, xi, li)
        hi_ = np.where(err < 0.0, hi_, xi)
        lo[idx], hi[idx] = li, hi_
        stop = (err == 0.0) | (hi_ - li <= 1e-15 * hi_)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_density = (ai - 1.0) * np.log(xi) + (bi - 1.0) * np.log1p(-xi) - log_norm[idx]
            tail = cdf if lower_tail else 1.0 - cdf
            # Newton on g = log(tail) - log_tail: g' = +-density / tail
            ratio = np.exp(np.minimum(log_density, 700.0)) / tail
            g = np.log(tail) - log_tail
            # lower tail: the step in log x (I_x ~ x^a there); upper tail: in x (1 - I_x ~ e^(-b x))
            step = np.where((tail > 0.0) & np.isfinite(ratio) & (ratio > 0.0),
                            xi * np.exp(-g / (xi * ratio)) if lower_tail else xi + g / ratio, np.nan)
        # a Newton step that no longer moves x means x is the root (the scalar code would go on
        # bisecting there, its step being no longer strictly inside the bracket)
        settled = np.isfinite(step) & (np.abs(step - xi) <= 1e-15 * xi)
        step = np.where((li < step) & (step < hi_), step, 0.5 * (li + hi_))
        close = ~stop & (np.abs(step - xi) <= 1e-15 * xi)
        stop |= settled
        x[idx] = np.where(stop, xi, step)
        active[idx[stop | close]] = False
    return x


def _cp_upper_arr(k: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`_cp_upper` element-wise."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    out = np.ones(k.shape)
    zero = k <= 0
    out[zero] = [-math.expm1(math.log(alpha) / v) for v in n[zero].tolist()]
    mid = (k > 0) & (k < n)
    if mid.any():
        out[mid] = _per_distinct(k[mid], n[mid], lambda kk, nn: _beta_quantile_arr(1.0 - alpha, kk + 1.0, nn - kk))
    return out


def _cp_lower_arr(k: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`_cp_lower` element-wise."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    out = np.zeros(k.shape)
    full = (k > 0) & (k >= n)
    out[full] = [math.exp(math.log(alpha) / v) for v in n[full].tolist()]
    mid = (k > 0) & (k < n)
    if mid.any():
        out[mid] = _per_distinct(k[mid], n[mid], lambda kk, nn: _beta_quantile_arr(alpha, kk, nn - kk + 1.0))
    return out


def _per_distinct(k: np.ndarray, n: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """fn(k, n) computed once per distinct (k, n) pair (classes of one size share their counts)."""
    pairs, inverse = np.unique(np.stack([k, n], axis=1), axis=0, return_inverse=True)
    return fn(pairs[:, 0].copy(), pairs[:, 1].copy())[inverse.reshape(-1)]


# --------------------------------------------------------------------------------------------
# Paired 0/1 intervals
# --------------------------------------------------------------------------------------------


def _decreasing_root(f: Callable[[float], float], lo: float, hi: float, xtol: float = 1e-13) -> float:
    """The root of a decreasing f with f(lo) >= 0 >= f(hi), by bisection to ``xtol``.

    Bisection, not Brent: Tango's statistic is monotone but kinked near its clip, where the
    interpolation steps of Brent's method gain nothing; 45 halvings of [-1, 1] reach 1e-13.
    """
    for _ in range(200):
        if hi - lo <= xtol + 4 * np.finfo(float).eps * abs(lo):
            break
        mid = 0.5 * (lo + hi)
        if f(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _tango_score(delta: float, b: float, c: float, n: float, cc: float = 0.0) -> float:
    """Tango's score statistic for H0: p12 - p21 = delta (p12 = P(negative flip)).

    The nuisance parameter p21 is replaced by its maximum-likelihood value under H0, the
    positive root of 2n q^2 + B q + C = 0. We use the cancellation-free form of that root
    because B is large and C tiny near delta = 0, where the naive formula loses all digits.
    ``cc`` is subtracted from the numerator (a continuity correction toward H0).
    """
    num = b - c - n * delta - cc
    big_b = -(b + c) + (2.0 * n - b + c) * delta
    big_c = -c * delta * (1.0 - delta)
    disc = max(big_b * big_b - 8.0 * n * big_c, 0.0)
    root = math.sqrt(disc)
    if big_b > 0.0:
        q = (-2.0 * big_c) / (big_b + root)
    else:
        q = (root - big_b) / (4.0 * n)
    var = 2.0 * q + delta * (1.0 - delta)
    if var <= 1e-300:
        if num == 0.0:
            return 0.0
        return math.copysign(_Z_CLIP, num)
    zval = num / math.sqrt(n * var)
    return max(-_Z_CLIP, min(_Z_CLIP, zval))


def _tango_lower(b: float, c: float, n: float, z: float, cc: float = 0.0) -> float:
    """Lower end of Tango's interval: the delta below the estimate where T(delta) = z.

    T decreases in delta, is 0 at the point estimate and +inf at delta = -1, so the root is
    bracketed by [-1, estimate].
    """
    dhat = (b - c) / n
    if b == 0.0 and c == 0.0 and cc == 0.0:
        # No discordant pairs: T^2 = n|d| / (1 - |d|) in closed form, so the end is exact.
        return -(z * z / (n + z * z))
    if dhat == -1.0:
        return -1.0

    def f(delta: float) -> float:
        # At the estimate the statistic is -cc/sd by definition; evaluating it there would
        # divide by a variance that can be 0 (all pairs flipped one way).
        if delta == dhat:
            return -z
        return _tango_score(delta, b, c, n, cc) - z

    return _decreasing_root(f, -1.0, dhat)


def _tango_bound(b: float, c: float, n: float, z: float, upper: bool) -> float:
    """One end of Tango's interval. The upper end is computed as the mirrored lower end of
    the swapped counts, so that swapping the two models mirrors the interval *exactly*."""
    if upper:
        return -_tango_lower(c, b, n, z)
    return _tango_lower(b, c, n, z)


def _tango_lower_arr(b: np.ndarray, c: np.ndarray, n: np.ndarray, z: float, cc: float) -> np.ndarray:
    """:func:`_tango_lower` element-wise (n an array too), with the same bisection steps, stopping
    rule and arithmetic as the scalar code, so the same floats."""
    b, c, n = (np.asarray(v, dtype=float) for v in (b, c, n))
    dhat = (b - c) / n
    lo, hi = np.full(b.shape, -1.0), dhat.copy()
    active = dhat != -1.0
    eps4 = 4 * np.finfo(float).eps
    for _ in range(200):
        active &= ~(hi - lo <= 1e-13 + eps4 * np.abs(lo))
        if not active.any():
            break
        idx = np.flatnonzero(active)
        bi, ci, ni, li, hi_, di = b[idx], c[idx], n[idx], lo[idx], hi[idx], dhat[idx]
        mid = 0.5 * (li + hi_)
        num = bi - ci - ni * mid - cc
        big_b = -(bi + ci) + (2.0 * ni - bi + ci) * mid
        big_c = -ci * mid * (1.0 - mid)
        root = np.sqrt(np.maximum(big_b * big_b - 8.0 * ni * big_c, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(big_b > 0.0, (-2.0 * big_c) / (big_b + root), (root - big_b) / (4.0 * ni))
            var = 2.0 * q + mid * (1.0 - mid)
            zval = np.clip(num / np.sqrt(ni * var), -_Z_CLIP, _Z_CLIP)
        zval = np.where(var <= 1e-300, np.where(num == 0.0, 0.0, np.copysign(_Z_CLIP, num)), zval)
        f = np.where(mid == di, -z, zval - z)
        lo[idx] = np.where(f > 0.0, mid, li)
        hi[idx] = np.where(f > 0.0, hi_, mid)
    out = 0.5 * (lo + hi)
    out[dhat == -1.0] = -1.0
    if cc == 0.0:
        none = (b == 0.0) & (c == 0.0)
        out[none] = -(z * z / (n[none] + z * z))
    return out


def _paired_high_arr(b: np.ndarray, c: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """The upper (PASS-side) bound of :func:`_paired_bounds`, element-wise."""
    b, c, n = (np.asarray(v, dtype=float) for v in (b, c, n))
    zp = _z(alpha)
    up_bc = np.where((b > 0) | (c > 0), -_tango_lower_arr(c, b, n, zp, _CC_PASS), 0.0)
    up_b0 = np.where(b > 0, -_tango_lower_arr(np.zeros_like(b), b, n, zp, _CC_PASS), 0.0)
    high0 = np.maximum(up_b0, _cp_upper_arr(b, n, alpha))
    return np.where(c == 0, high0, np.minimum(up_bc, high0))


def tango_interval(b: float, c: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Tango (1998) score interval of delta = (b - c) / n for paired 0/1 outcomes.

    ``b`` counts pairs where the base model was right and the tuned one wrong (negative flips),
    ``c`` the opposite (positive flips), ``n`` all pairs. The interval is two-sided at level
    ``1 - 2*alpha`` (z = Phi^-1(1 - alpha)), so each end is a one-sided bound at ``alpha``.
    This is the plain interval of the paper; the decision uses :func:`_paired_bounds`, which
    makes the no-flip and FAIL-side ends conservative.
    """
    a = _check_alpha(alpha)
    b, c, n = _check_counts(b, c, n)
    z = _z(a)
    return _tango_bound(b, c, n, z, upper=False), _tango_bound(b, c, n, z, upper=True)


def _check_counts(b: float, c: float, n: float) -> tuple[float, float, float]:
    b, c, n = float(b), float(c), float(n)
    if not (math.isfinite(b) and math.isfinite(c) and math.isfinite(n)):
        raise ValueError(f"counts must be finite, got b={b}, c={c}, n={n}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}: no pairs to compare")
    if b < 0 or c < 0 or b + c > n * (1 + 1e-12):
        raise ValueError(f"need 0 <= b, c and b + c <= n, got b={b}, c={c}, n={n}")
    return b, c, n


def _paired_bounds(b: float, c: float, n: float, alpha: float, fail_alpha: float) -> tuple[float, float]:
    """The (lower, upper) bounds of the paired difference that the 0/1 verdict rests on.

    Upper (PASS side): Tango at alpha; when no example flipped the good way (c = 0) it is at
    least the exact Clopper-Pearson upper bound of the negative-flip rate b/n, which bounds the
    drop p12 - p21 <= p12 exactly. With no flips at all this is 1 - alpha^(1/n): the sample
    "nothing changed" passes only at an n where an unseen drop of the margin would have shown
    a flip with probability >= 1 - alpha. Lower (FAIL side): Tango at fail_alpha with a 0.5
    continuity correction, and at most minus the exact upper bound of the positive-flip rate
    when no example flipped badly (b = 0).
    """
    zp, zf = _z(alpha), _z(fail_alpha)

    def upper(b: float, c: float) -> float:
        return -_tango_lower(c, b, n, zp, cc=_CC_PASS) if (b or c) else 0.0

    def lower(b: float, c: float) -> float:
        return _tango_lower(b, c, n, zf, cc=_CC_FAIL) if (b or c) else 0.0

    # c = 0: at least the exact bound of p12 >= drop; then never above it for c > 0 (one more
    # positive flip must not raise the bound, which a continuity correction alone could do)
    high0 = max(upper(b, 0.0), _cp_upper(b, n, alpha))
    high = high0 if c == 0 else min(upper(b, c), high0)
    low0 = min(lower(0.0, c), -_cp_upper(c, n, fail_alpha))
    low = low0 if b == 0 else max(lower(b, c), low0)
    return low, high


def _tango_lower_vec(b: np.ndarray, c: np.ndarray, n: float, z: float, cc: float = 0.0) -> np.ndarray:
    """Vectorised :func:`_tango_lower` (bisection on arrays), for simulating many tables."""
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    dhat = (b - c) / n
    lo = np.full(b.shape, -1.0)
    hi = dhat.copy()
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        num = b - c - n * mid - cc
        big_b = -(b + c) + (2.0 * n - b + c) * mid
        big_c = -c * mid * (1.0 - mid)
        root = np.sqrt(np.maximum(big_b * big_b - 8.0 * n * big_c, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(big_b > 0.0, -2.0 * big_c / (big_b + root), (root - big_b) / (4.0 * n))
            var = 2.0 * q + mid * (1.0 - mid)
            stat = num / np.sqrt(n * np.maximum(var, 1e-300))
        stat = np.where(var <= 1e-300, np.sign(num) * _Z_CLIP, stat)
        above = (stat > z) & (mid != dhat)
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    out = 0.5 * (lo + hi)
    return np.where(dhat == -1.0, -1.0, out)


def _paired_bounds_vec(b: np.ndarray, c: np.ndarray, n: float, alpha: float,
                       fail_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`_paired_bounds`."""
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    zp, zf = _z(alpha), _z(fail_alpha)
    none = (b == 0) & (c == 0)
    high = np.where(none, 0.0, -_tango_lower_vec(c, b, n, zp, cc=_CC_PASS))
    high_c0 = np.where(b == 0, 0.0, -_tango_lower_vec(np.zeros_like(b), b, n, zp, cc=_CC_PASS))
    low = np.where(none, 0.0, _tango_lower_vec(b, c, n, zf, cc=_CC_FAIL))
    low_b0 = np.where(c == 0, 0.0, _tango_lower_vec(np.zeros_like(c), c, n, zf, cc=_CC_FAIL))
    cp_b = {k: _cp_upper(float(k), n, alpha) for k in np.unique(b).tolist()}
    cp_c = {k: _cp_upper(float(k), n, fail_alpha) for k in np.unique(c).tolist()}
    high_c0 = np.maximum(high_c0, np.array([cp_b[k] for k in b.tolist()]))
    low_b0 = np.minimum(low_b0, -np.array([cp_c[k] for k in c.tolist()]))
    high = np.where(c == 0, high_c0, np.minimum(high, high_c0))
    low = np.where(b == 0, low_b0, np.maximum(low, low_b0))
    return low, high


# ----- the ratio of paired proportions ------------------------------------------------------


def _restricted_mle(cells: Sequence[float], a: Sequence[float]) -> list[float]:
    """Multinomial maximum likelihood under the linear constraint sum_j a_j p_j = 0.

    KKT conditions: p_j = n_j / (n + mu a_j) for observed cells, with mu the root of the
    decreasing g(mu) = sum_j a_j n_j / (n + mu a_j) on the interval where every denominator is
    positive. When the root lies beyond an end that only an *empty* cell fixes, that empty cell
    takes the mass the constraint needs (its p_j > 0 although n_j = 0) -- the case of tables
    with no flips, where the naive formula has no solution.
    """
    n = float(sum(cells))
    ends_lo = [(-n / aj, nj) for nj, aj in zip(cells, a) if aj > 0.0]
    ends_hi = [(-n / aj, nj) for nj, aj in zip(cells, a) if aj < 0.0]
    lo = max((e for e, _ in ends_lo), default=-math.inf)
    hi = min((e for e, _ in ends_hi), default=math.inf)
    lo_hard = any(nj > 0 and e == lo for e, nj in ends_lo)
    hi_hard = any(nj > 0 and e == hi for e, nj in ends_hi)
    lo_cell = next((j for j, (nj, aj) in enumerate(zip(cells, a)) if aj > 0.0 and -n / aj == lo), -1)
    hi_cell = next((j for j, (nj, aj) in enumerate(zip(cells, a)) if aj < 0.0 and -n / aj == hi), -1)

    obs = [(nj, aj) for nj, aj in zip(cells, a) if nj > 0]

    def g(mu: float) -> float:
        return sum(aj * nj / (n + mu * aj) for nj, aj in obs)

    p = [0.0] * len(cells)
    if not lo_hard and lo_cell >= 0 and g(lo) <= 0.0:
        mu, extra = lo, lo_cell
    elif not hi_hard and hi_cell >= 0 and g(hi) >= 0.0:
        mu, extra = hi, hi_cell
    else:
        # Safeguarded Newton on the decreasing g: a Newton step when it stays inside the
        # bracket [left, right] known to hold the root, a bisection otherwise.
        extra = -1
        left, right = lo, hi
        mu = 0.0 if lo < 0.0 < hi else 0.5 * (lo + hi)
        for _ in range(200):
            val = g(mu)
            if val == 0.0:
                break
            if val > 0.0:
                left = mu
            else:
                right = mu
            slope = -sum(aj * aj * nj / (n + mu * aj) ** 2 for nj, aj in obs)
            step = mu - val / slope if slope < 0.0 else math.nan
            if not left < step < right:
                step = 0.5 * (left + right)
            if abs(step - mu) <= 1e-15 * n:
                mu = step
                break
            mu = step
    for j, (nj, aj) in enumerate(zip(cells, a)):
        if nj > 0:
            p[j] = nj / (n + mu * aj)
    if extra >= 0:
        p[extra] = max(0.0, -sum(aj * pj for aj, pj in zip(a, p)) / a[extra])
    total = sum(p)
    return [pj / total for pj in p]


def _constrained_score(cells: Sequence[float], a: Sequence[float], shift: float) -> float:
    """Score statistic (sum_j a_j n_j + shift) / sqrt(n sum_j a_j^2 p~_j), p~ restricted."""
    n = float(sum(cells))
    num = sum(aj * nj for aj, nj in zip(a, cells)) + shift
    p = _restricted_mle(cells, a)
    var = sum(aj * aj * pj for aj, pj in zip(a, p))
    if var <= 1e-300:
        return 0.0 if num == 0.0 else math.copysign(_Z_CLIP, num)
    return max(-_Z_CLIP, min(_Z_CLIP, num / math.sqrt(n * var)))


def _ratio_cells_a(theta: float) -> tuple[float, float, float, float]:
    # cells (11, 10, 01, 00) = (both 1, base 1 only, tuned 1 only, both 0); the per-pair value
    # y_t - theta * y_b has mean 0 exactly when theta = P(y_t = 1) / P(y_b = 1)
    return (1.0 - theta, -theta, 1.0, 0.0)


def _ratio_bound(cells: Sequence[float], z: float, upper: bool, cc: float = 0.0) -> float:
    return _ratio_bound_cached(tuple(float(v) for v in cells), float(z), bool(upper), float(cc))


@lru_cache(maxsize=4096)
def _ratio_bound_cached(cells: tuple[float, ...], z: float, upper: bool, cc: float) -> float:
    """One end of the score interval of theta = P(tuned = 1) / P(base = 1), paired.

    The statistic decreases in theta; the lower end solves Z(theta) = z, the upper one
    Z(theta) = -z, each with the numerator moved ``cc`` counts toward H0. Bisection on
    log(theta); 0 and inf are returned when the data cannot bound theta on that side.
    """
    n11, n10, n01, _ = cells
    nb, nt = n11 + n10, n11 + n01
    est = nt / nb
    if upper:
        def f(log_t: float) -> float:
            return _constrained_score(cells, _ratio_cells_a(math.exp(log_t)), cc) + z
        lo, hi = (math.log(est) if est > 0 else -60.0), 60.0
        if f(hi) > 0.0:
            return math.inf
    else:
        if nt == 0:
            return 0.0

        def f(log_t: float) -> float:
            return _constrained_score(cells, _ratio_cells_a(math.exp(log_t)), -cc) - z
        lo, hi = -60.0, math.log(est)
        if f(lo) <= 0.0:
            return 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if hi - lo <= 1e-12 or mid in (lo, hi):
            break
        if f(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def ratio_score_interval(n11: int, n10: int, n01: int, n00: int,
                         alpha: float = 0.05) -> tuple[float, float]:
    """Score interval of theta = P(tuned = 1) / P(base = 1) for paired 0/1 outcomes.

    Cells: ``n11`` both 1, ``n10`` base 1 and tuned 0, ``n01`` base 0 and tuned 1, ``n00`` both 0.
    The statistic is the score test of the multinomial under theta (Nam and Blackwelder 2002;
    Tang, Tang and Chan 2003) with the nuisance parameters at their restricted MLE; two-sided
    at 1 - 2*alpha, so each end is a one-sided bound at alpha. No continuity correction (the
    decision adds one on its FAIL side).
    """
    a = _check_alpha(alpha)
    cells = [float(v) for v in (n11, n10, n01, n00)]
    if any(not math.isfinite(v) or v < 0 for v in cells):
        raise ValueError(f"cell counts must be finite and non-negative, got {cells}")
    if cells[0] + cells[1] <= 0:
        raise ValueError("the ratio is undefined: the base proportion is 0 (n11 + n10 = 0)")
    z = _z(a)
    return _ratio_bound(cells, z, upper=False), _ratio_bound(cells, z, upper=True)


def wilson_bounds(k: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a single proportion k/n, two-sided at level 1 - 2*alpha.

    Kept for reference; budgets decide on the exact :func:`clopper_pearson` bounds, because
    Wilson's lower bound is far too low-risk at small k (one flip in 22 examples "proved" a
    negative-flip rate above 1 % a fifth of the time).
    """
    a = _check_alpha(alpha)
    k, n = float(k), float(n)
    if not n > 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(a)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _no_change_upper(n: int, alpha: float) -> float:
    """Exact upper bound of the drop of a [0, 1] per-example score when no example changed."""
    return _cp_upper(0.0, float(n), alpha)


def min_n_to_pass(max_drop: float, alpha: float = 0.05) -> int | None:
    """Smallest eval-set size at which even two *identical* models could PASS a bounded metric.

    With nothing changed the upper bound of the drop is the exact 1 - alpha^(1/n) (a tuned
    model that changed a fraction ``max_drop`` of the answers shows no change with
    probability (1 - max_drop)^n); below the returned n no sample can pass, so the plugin
    rejects such a marker at collection time instead of loading two checkpoints to report
    INCONCLUSIVE. Returns None when ``max_drop <= 0``: then nothing can pass. At
    max_drop = 0.02 and alpha = 0.05 this is 149.
    """
    a = _check_alpha(alpha)
    m = _check_margin(max_drop, "max_drop")
    if m <= 0.0:
        return None
    if m >= 1.0:
        return 1
    # Closed form n > log(alpha) / log(1 - m), then nudged so it agrees exactly with the
    # floating-point rule the comparisons apply.
    n = max(1, int(math.floor(math.log(a) / math.log1p(-m))) + 1)
    while n > 1 and _below(_no_change_upper(n - 1, a), m):
        n -= 1
    while not _below(_no_change_upper(n, a), m):
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


def _tol(limit: float) -> float:
    return _TIE_RTOL * max(1.0, abs(limit))


def _below(x: Any, limit: float) -> Any:
    return x < limit - _tol(limit)


def _above(x: Any, limit: float) -> Any:
    return x > limit + _tol(limit)


def _ties(x: float, limit: float) -> bool:
    return abs(x - limit) <= _tol(limit)


def _decide(low: float, high: float, limit: float) -> str:
    """Three-way rule; a bound equal to the limit (within float tolerance) proves nothing."""
    if _below(high, limit):
        return PASS
    if _above(low, limit):
        return FAIL
    return INCONCLUSIVE


def _fmt_pair(x: float, y: float) -> tuple[str, str]:
    """Format two numbers with enough decimals that they do not print as equal when unequal."""
    for digits in range(3, 10):
        sx, sy = f"{x:.{digits}f}", f"{y:.{digits}f}"
        distinct = sx != sy or x == y
        # "-0.000" for -0.0002 hides the sign that matters; add digits until it shows.
        visible = all(v == 0.0 or not math.isfinite(v) or float(s) != 0.0
                      for v, s in ((x, sx), (y, sy)))
        if distinct and visible:
            return sx, sy
    return f"{x:.3g}", f"{y:.3g}"


class _Settle(NamedTuple):
    """How many examples would settle an inconclusive check, and how surely."""

    n: int | None = None
    prob: float | None = None
    why: str = ""  # "tie", "cap", or a sentence when n is None


def _reason(verdict: str, low: float, high: float, margin: float, drop: float,
            settle: _Settle | None = None, note: str = "") -> str:
    if verdict == PASS:
        hs, ms = _fmt_pair(high, margin)
        return f"upper bound of the drop {hs} < margin {ms}"
    if verdict == FAIL:
        ls, ms = _fmt_pair(low, margin)
        return f"lower bound of the drop {ls} > margin {ms} (proven regression)"
    ls, hs = _fmt_pair(low, high)
    _, ms = _fmt_pair(drop, margin)
    head = f"interval [{ls}, {hs}] contains the margin {ms}"
    if note:
        head = f"{note}; {head}" if math.isfinite(low) or math.isfinite(high) else note
    settle = settle or _Settle()
    if settle.n is not None and settle.prob is None:
        return f"{head}; at least {settle.n:,} examples are needed before it can be decided"
    if settle.n is not None and settle.prob == 1.0:
        return f"{head}; {settle.n:,} examples would settle it if, as here, no example changes"
    if settle.n is not None:
        return (f"{head}; about {settle.n:,} examples would settle it with probability "
                f"{settle.prob:.2f} if the observed rates hold")
    if settle.why == "tie":
        return f"{head}; the observed drop equals the margin, so no sample size would settle it"
    if settle.why == "cap":
        return f"{head}; more than {_N_NEEDED_CAP:,} examples would be needed to settle it"
    return f"{head}; {settle.why}" if settle.why else head


def combine_verdicts(*verdicts: str) -> str:
    """Combine component verdicts: fail > inconclusive > pass.

    PASS only when every component passes (an intersection-union test, which needs no
    multiplicity correction); any proven failure fails the whole -- a union of FAIL claims, so
    the caller splits ``fail_alpha`` over them (``ForgettingSession._decide`` does).
    """
    if not verdicts:
        raise ValueError("combine_verdicts needs at least one verdict")
    for v in verdicts:
        if v not in _SEVERITY:
            raise ValueError(f"unknown verdict {v!r}; expected one of {sorted(_SEVERITY)}")
    return max(verdicts, key=_SEVERITY.__getitem__)


# --------------------------------------------------------------------------------------------
# n_needed: the n at which the check settles with probability >= 0.8 under the observed rates
# --------------------------------------------------------------------------------------------

_Z_SETTLE = NormalDist().inv_cdf(_SETTLE_PROB)


def _normal_settle(n: int, drop: float, low: float, high: float, margin: float,
                   alpha: float, fail_alpha: float) -> _Settle:
    """Normal approximation: the bound on the settling side sits z * s / sqrt(n) from the
    estimate; the same s at n' settles with probability Phi(|margin - drop| sqrt(n') / s - z)."""
    if _ties(drop, margin):
        return _Settle(why="tie")
    if drop < margin:
        half, gap, z = high - drop, margin - drop, _z(alpha)
    else:
        half, gap, z = drop - low, drop - margin, _z(fail_alpha)
    if not (math.isfinite(half) and half > 0.0):
        return _Settle(why="the bound on the settling side is not finite, so its growth with n cannot be extrapolated")
    s = half * math.sqrt(n) / z
    need = ((z + _Z_SETTLE) * s / gap) ** 2
    if not need < _N_NEEDED_CAP:
        return _Settle(why="cap")
    m = max(n + 1, int(math.ceil(need)))
    return _Settle(n=m, prob=_phi(gap * math.sqrt(m) / s - z))


def _tango_settle(b: int, c: int, n: int, margin: float, alpha: float, fail_alpha: float,
                  seed: int) -> _Settle:
    """n at which tables drawn at the observed flip rates settle with probability >= 0.8,
    checked by simulating the decision itself (vectorised bounds) at the candidate n."""
    drop = (b - c) / n
    if _ties(drop, margin):
        return _Settle(why="tie")
    if b == 0 and c == 0:  # nothing flips at these rates: the exact no-flip bound decides
        need = min_n_to_pass(margin, alpha) if margin > 0 else min_n_to_pass(-margin, fail_alpha)
        if need is None:
            return _Settle(why="tie")
        return _Settle(n=max(n + 1, need), prob=1.0)
    rb, rc = b / n, c / n
    s = math.sqrt(max(rb + rc - drop * drop, 1e-300))
    z, cc = (_z(alpha), _CC_PASS) if drop < margin else (_z(fail_alpha), _CC_FAIL)
    gap = abs(margin - drop)
    # Normal approximation of the bound itself: drop + z s / sqrt(m) + cc / m on the settling
    # side; the smallest m with P(settle) >= 0.8 solves gap x^2 - (z + z80) s x - cc = 0, x = sqrt(m).
    k = (z + _Z_SETTLE) * s
    x = (k + math.sqrt(k * k + 4.0 * gap * cc)) / (2.0 * gap)
    if not x * x < _N_NEEDED_CAP:
        return _Settle(why="cap")
    m = max(n + 1, int(math.ceil(x * x)))
    probs = [rb, rc, max(0.0, 1.0 - rb - rc)]
    for step in range(30):  # check it by simulating the decision itself, and grow m if short
        if m > _N_NEEDED_CAP:
            return _Settle(why="cap")
        draws = np.random.default_rng(seed).multinomial(m, probs, size=_SETTLE_DRAWS)
        low, high = _paired_bounds_vec(draws[:, 0], draws[:, 1], float(m), alpha, fail_alpha)
        prob = float(np.mean(_below(high, margin) | _above(low, margin)))
        if prob >= _SETTLE_PROB:
            return _Settle(n=m, prob=prob)
        m = int(math.ceil(m * (1.1 if step < 5 else 1.5))) + 1
    return _Settle(why="cap")  # pragma: no cover - 1.5^25 outgrows the cap first


# --------------------------------------------------------------------------------------------
# Bootstrap machinery
# --------------------------------------------------------------------------------------------


def _drop_of(base: Any, tuned: Any, relative: bool, higher_is_better: bool) -> Any:
    """The signed drop (positive = worse); works on scalars and on arrays of replicates."""
    diff = base - tuned if higher_is_better else tuned - base
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            return diff / np.abs(base)
    return diff


def _index_chunks(n: int, n_boot: int, seed: int, width: int = 1):
    """Seeded paired resamples as (rows, n) index matrices, in memory-bounded chunks; the chunk
    size depends only on n (and the caller's width), so results depend only on the seed."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // (n * max(1, width)))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _bootstrap_replicates(n: int, n_boot: int, seed: int,
                          batch: Callable[[np.ndarray], Any]) -> Any:
    """Concatenate ``batch(idx)`` over the resamples; batch returns an array or a tuple of them."""
    parts = [batch(idx) for idx in _index_chunks(n, n_boot, seed)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def _distinct_rows(*arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of identical examples over aligned (n, d_j) float arrays: ``(codes, first)`` with
    example i in group codes[i] and every array's row i equal to its row first[codes[i]].

    Rows are hashed by a fixed projection and the grouping is then verified row by row (equal
    rows that hash apart only make more groups); a collision falls back to an exact sort."""
    n = arrays[0].shape[0]
    rng = np.random.default_rng(0x5EED)
    proj = np.zeros(n)
    for arr in arrays:
        with np.errstate(over="ignore", invalid="ignore"):
            proj += arr @ rng.standard_normal(arr.shape[1])
    _, first, codes = np.unique(proj, return_index=True, return_inverse=True)
    codes = codes.reshape(-1)
    step = max(1, _CHUNK_ENTRIES // max(1, sum(a.shape[1] for a in arrays)))
    same = all(np.array_equal(arr[lo:lo + step], arr[first[codes[lo:lo + step]]])
               for arr in arrays for lo in range(0, n, step))
    if not same:
        _, first, codes = np.unique(np.concatenate(arrays, axis=1), axis=0, return_index=True,
                                    return_inverse=True)
        codes = codes.reshape(-1)
    return codes, first


def _too_many_groups(*arrays: np.ndarray) -> bool:
    """True when the rows of these aligned (n, d_j) arrays certainly fall into more than
    n / _MULTINOMIAL_RATIO groups, so :func:`_group_sizes` would say None: the first
    n // _MULTINOMIAL_RATIO + 1 rows alone hold more distinct rows than that (an exact test that
    sorts an eighth of the data; scores that never repeat stop here)."""
    n = arrays[0].shape[0]
    head = n // _MULTINOMIAL_RATIO + 1
    if head >= n:
        return False
    _, first = _distinct_rows(*(a[:head] for a in arrays))
    return first.size * _MULTINOMIAL_RATIO > n


def _group_sizes(codes: np.ndarray, groups: int, n: int) -> np.ndarray | None:
    """Examples per group when resampling groups by multinomial pays (see _MULTINOMIAL_RATIO)."""
    if groups * _MULTINOMIAL_RATIO > n:
        return None
    return np.bincount(codes, minlength=groups).astype(float)


def _count_chunks(sizes: np.ndarray | None, n: int, n_boot: int, seed: int, width: int = 1):
    """Seeded paired resamples as (rows, m) float count matrices in memory-bounded chunks.

    ``sizes`` None: counts of each of the n examples, from the index matrices of
    :func:`_index_chunks` (the same stream). Otherwise counts of each group of identical examples
    (sizes[g] examples in group g), one multinomial draw of n per resample: the distribution of
    the per-group totals of n uniform indices, without drawing them."""
    if sizes is None:
        for idx in _index_chunks(n, n_boot, seed, width):
            yield _weights(idx, n)
        return
    rng = np.random.default_rng(seed)
    p = sizes / float(n)
    rows = max(1, _CHUNK_ENTRIES // (sizes.size * max(1, width)))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.multinomial(n, p, size=k).astype(float)
        done += k


def _order_bounds(low_reps: np.ndarray, high_reps: np.ndarray, alpha_low: float,
                  alpha_high: float) -> tuple[float, float]:
    """The alpha_low quantile of ``low_reps`` and the (1 - alpha_high) quantile of ``high_reps``
    as order statistics (no interpolation, so infinite replicates stay meaningful)."""
    size = low_reps.size
    k_lo = min(size - 1, max(0, int(math.floor(alpha_low * (size - 1)))))
    k_hi = min(size - 1, max(0, int(math.floor(alpha_high * (size - 1)))))
    lo = float(np.partition(low_reps, k_lo)[k_lo])
    hi = float(np.partition(high_reps, size - 1 - k_hi)[size - 1 - k_hi])
    return lo, hi


def _studentized_bounds(drop: float, se: float, reps: np.ndarray, reps_se: np.ndarray,
                        alpha: float, fail_alpha: float) -> tuple[float, float]:
    """Bootstrap-t bounds: t* = (drop* - drop) / se*; upper = drop - q_alpha(t*) se, lower =
    drop - q_{1 - fail_alpha}(t*) se. A resample with no spread has t* = +-inf (or 0 when its
    drop equals the estimate) and an undefined one counts against both a PASS and a FAIL."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (reps - drop) / reps_se
        t = np.where(reps_se > 0, t, np.where(reps == drop, 0.0, np.sign(reps - drop) * np.inf))
    undefined = np.isnan(t)
    q_low, q_high = _order_bounds(np.where(undefined, -np.inf, t), np.where(undefined, np.inf, t),
                                  alpha, fail_alpha)
    with np.errstate(invalid="ignore"):
        high = drop - q_low * se if math.isfinite(q_low) else math.inf
        low = drop - q_high * se if math.isfinite(q_high) else -math.inf
    return min(low, drop), max(high, drop)


class _SmoothMean(NamedTuple):
    """A drop written as a smooth function of the means of per-example inputs, for
    :func:`_edgeworth_bounds`: ``drop = g(mean_i z_i)`` with ``z`` of shape (n, m), and
    ``grad(zbar) -> (g(zbar), gradient of g at zbar)``. The studentised statistic is the one the
    bootstrap-t resamples: (g(zbar*) - g(zbar)) / se*, se* the delta-method SE (gradient at the
    resample's own mean, the resample's covariance)."""

    z: np.ndarray
    grad: Callable[[np.ndarray], tuple[float, np.ndarray]]


def _edgeworth_terms(sm: _SmoothMean) -> tuple[float, float, float, float, float]:
    """(g(zbar), sigma, k12, k31, second) of the one-term Edgeworth expansion of the studentised
    smooth function of means T = sqrt(n) (g(zbar) - g(mu)) / sigma_hat (Hall 1992, sections 2.4
    and 3.5), with the population moments replaced by the sample's:
    P(T <= x) = Phi(x) - n^(-1/2) (k12 + k31 (x^2 - 1) / 6) phi(x) + O(1/n), where, with
    a = grad g, H = Hessian of g, S = covariance of z, psi_i = a . (z_i - zbar), mu3 = E psi^3 and
    q = a' S H S a:  k12 = tr(H S) / (2 sigma) - (mu3 + 2 q) / (2 sigma^3) (the mean of T) and
    k31 = -(2 mu3 + 3 q) / sigma^3 (its third cumulant). For a plain mean (H = 0) this is the
    textbook q1(x) = gamma (2 x^2 + 1) / 6 of Student's t. H comes from central differences of the
    analytic gradient (relative step 1e-4: truncation ~1e-8, far below what the bound can see).
    ``second`` = (skewness^2 + |excess kurtosis|) / n, the size of the O(1/n) terms left out."""
    z = sm.z
    n = z.shape[0]
    zbar = z.mean(axis=0)
    u = z - zbar
    cov = u.T @ u / n                                    # S
    value, a = sm.grad(zbar)
    a = np.asarray(a, dtype=float)
    psi = u @ a
    psi2 = psi * psi
    m2 = float(psi2.sum()) / n
    sigma = math.sqrt(m2) if m2 > 0 else 0.0
    if not sigma > 0.0:
        return float(value), 0.0, 0.0, 0.0, math.inf
    m3 = float(psi2 @ psi) / n
    m4 = float(psi2 @ psi2) / n
    m = zbar.size
    spread = np.sqrt(np.maximum(np.diag(cov), 0.0))
    hess = np.zeros((m, m))
    for j in range(m):
        h = 1e-4 * max(abs(float(zbar[j])), float(spread[j]), 1e-300)
        up, down = zbar.copy(), zbar.copy()
        up[j] += h
        down[j] -= h
        hess[:, j] = (np.asarray(sm.grad(up)[1], dtype=float) - np.asarray(sm.grad(down)[1], dtype=float)) / (2.0 * h)
    hess = 0.5 * (hess + hess.T)
    sa = cov @ a                                         # S a
    q = float(sa @ hess @ sa)
    tr_hs = float(np.sum(hess * cov))                    # tr(H S)
    k12 = tr_hs / (2.0 * sigma) - (m3 + 2.0 * q) / (2.0 * sigma ** 3)
    k31 = -(2.0 * m3 + 3.0 * q) / sigma ** 3
    second = ((m3 / sigma ** 3) ** 2 + abs(m4 / sigma ** 4 - 3.0)) / n
    return float(value), sigma, k12, k31, second


def _edgeworth_bounds(sm: _SmoothMean, drop: float, se: float, alpha: float,
                      fail_alpha: float) -> tuple[float, float] | None:
    """The bounds the bootstrap-t approximates, computed from the expansion instead of resamples.

    The bootstrap-t's bounds are drop - t*_q se with t*_q the quantiles of its resampled T*; T*'s
    distribution has the expansion of :func:`_edgeworth_terms` with the sample's moments, so its
    quantiles are t_q = z_q + n^(-1/2) (k12 + k31 (z_q^2 - 1) / 6) + O_p(1/n) (Cornish-Fisher):
    the same second-order accurate interval (Hall 1992, section 3.5, "Edgeworth-corrected" /
    skewness-corrected studentised interval; Johnson's modified t for a plain mean), without the
    Monte-Carlo error of 2,000 resamples (about 0.05 SE at these levels). None when the expansion
    is not trustworthy here (a shift beyond _EDGEWORTH_MAX_SHIFT SEs, or O(1/n) terms beyond
    _EDGEWORTH_MAX_SECOND: very skewed or heavy-tailed scores); the caller then resamples."""
    value, sigma, k12, k31, second = _edgeworth_terms(sm)
    n = sm.z.shape[0]
    if not (sigma > 0.0 and math.isfinite(second) and second <= _EDGEWORTH_MAX_SECOND
            and math.isclose(value, drop, rel_tol=1e-7, abs_tol=1e-12 * max(1.0, abs(drop)))):
        return None
    root_n = math.sqrt(n)

    def shift(zq: float) -> float:
        return (k12 + k31 * (zq * zq - 1.0) / 6.0) / root_n

    zp, zf = _z(alpha), _z(fail_alpha)
    s_low, s_high = shift(-zp), shift(zf)   # at the alpha and 1 - fail_alpha quantiles of T
    if max(abs(s_low), abs(s_high)) > _EDGEWORTH_MAX_SHIFT:
        return None
    high = drop - (-zp + s_low) * se
    low = drop - (zf + s_high) * se
    return min(low, drop), max(high, drop)


def _bca_bounds(drop: float, reps: np.ndarray, jack: np.ndarray, alpha: float,
                fail_alpha: float) -> tuple[float, float] | None:
    """BCa bounds (Efron 1987); None when the resamples lie entirely on one side of the estimate
    (no bias correction exists, so no bound would be honest)."""
    size = reps.size
    frac = (np.count_nonzero(reps < drop) + 0.5 * np.count_nonzero(reps == drop)) / size
    if not 0.0 < frac < 1.0:
        return None
    z0 = NormalDist().inv_cdf(frac)
    dev = jack.mean() - jack
    ss = float(np.sum(dev * dev))
    acc = float(np.sum(dev ** 3)) / (6.0 * ss ** 1.5) if ss > 0 else 0.0

    def level(zq: float) -> float:
        den = 1.0 - acc * (z0 + zq)
        if den <= 0.0:
            return 1.0 if zq > 0 else 0.0
        return _phi(z0 + (z0 + zq) / den)

    a_hi = 1.0 - level(_z(alpha))        # tail share above the upper bound
    a_lo = level(-_z(fail_alpha))        # tail share below the lower bound
    undefined = np.isnan(reps)
    lo, hi = _order_bounds(np.where(undefined, -np.inf, reps), np.where(undefined, np.inf, reps),
                           a_lo, a_hi)
    if a_hi * (size - 1) < 1.0:
        hi = math.inf   # the corrected level is beyond the resolution of the resamples
    if a_lo * (size - 1) < 1.0:
        lo = -math.inf
    return min(lo, drop), max(hi, drop)


#: "not computed yet" for lazily built attributes
_UNSET: Any = object()


class _RatioParts:
    """Validated :class:`Ratio` arrays as (n, K) floats, plus the vectorised statistic."""

    def __init__(self, ratio: Ratio, n: int) -> None:
        if ratio.transform not in ("identity", "exp"):
            raise ValueError(f"Ratio.transform must be 'identity' or 'exp', got {ratio.transform!r}")
        arrays = []
        for name in ("num_base", "den_base", "num_tuned", "den_tuned"):
            arr = np.asarray(getattr(ratio, name), dtype=float)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"Ratio.{name} must have one row per example ({n}), got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"Ratio.{name} contains NaN/Inf")
            arrays.append(arr)
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"Ratio arrays must have one shape, got {sorted(shapes)}")
        self.yb, self.xb, self.yt, self.xt = arrays
        if (self.xb < 0).any() or (self.xt < 0).any():
            raise ValueError("Ratio denominators must be non-negative")
        self.n = n
        self.exp = ratio.transform == "exp"
        self.present_b = self.xb.sum(axis=0) > 0
        self.present_t = self.xt.sum(axis=0) > 0
        if not self.present_b.any() or not self.present_t.any():
            raise ValueError("Ratio denominators sum to 0 on the whole eval set: the metric is undefined")
        self.width = self.yb.shape[1]
        self.unchanged = bool(np.array_equal(self.yb, self.yt) and np.array_equal(self.xb, self.xt))
        self.den_fixed = bool(ratio.den_fixed)
        # the bootstrap resamples groups of identical examples when there are few of them
        self.sizes = None
        if not _too_many_groups(*arrays):
            codes, first = _distinct_rows(*arrays)
            self.sizes = _group_sizes(codes, first.size, n)
        self.grouped = tuple(a[first] for a in arrays) if self.sizes is not None else tuple(arrays)
        self._gram: Any = _UNSET

    @property
    def gram(self) -> Any:
        """Per-example resamples of a metric with one or two columns: the SE from a weighted Gram
        matrix of the centred per-example inputs, one (rows x n) product instead of several
        passes. Built at first use (the analytic large-n path never needs it); None otherwise."""
        if self._gram is _UNSET:
            self._gram = None
            if self.sizes is None and self.width <= 2:
                z = np.concatenate([self.yb, self.xb, self.yt, self.xt], axis=1)
                centre = z.mean(axis=0)
                u = z - centre
                iu, ju = np.triu_indices(z.shape[1])
                self._gram = (np.concatenate([z, u[:, iu] * u[:, ju]], axis=1), centre, iu, ju)
        return self._gram

    @gram.setter
    def gram(self, value: Any) -> None:
        self._gram = value

    def replicates(self, relative: bool, hib: bool, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Drops and SEs of the seeded resamples (group counts when few groups, else per example)."""
        grouped = self.sizes is not None
        chunks = [self.drop_and_se(w, relative, hib, grouped=grouped)
                  for w in _count_chunks(self.sizes, self.n, n_boot, seed, self.width)]
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

    def smooth(self, relative: bool, hib: bool) -> _SmoothMean:
        """The drop as a function of the means of z = (num_base, den_base, num_tuned, den_tuned),
        gradient from :meth:`_terms` (the linearisation the bootstrap-t's SE uses)."""
        z = np.concatenate([self.yb, self.xb, self.yt, self.xt], axis=1)
        kk = self.width
        sign = 1.0 if hib else -1.0

        def grad(m: np.ndarray) -> tuple[float, np.ndarray]:
            s = m[None, :] * self.n
            vb, ab, gb = self._terms(s[:, :kk], s[:, kk:2 * kk], self.present_b)
            vt, at, gt = self._terms(s[:, 2 * kk:3 * kk], s[:, 3 * kk:], self.present_t)
            # _terms' coefficients are per example of a sum over n: the gradient in the means
            drop = sign * (vb - vt)
            beta = sign * np.concatenate([ab, gb, -at, -gt], axis=1)
            if relative:
                own = np.concatenate([ab, gb, np.zeros_like(at), np.zeros_like(gt)], axis=1)
                drop = drop / np.abs(vb)
                beta = (beta - (drop * np.sign(vb))[:, None] * own) / np.abs(vb)[:, None]
            return float(drop[0]), beta[0]

        return _SmoothMean(z, grad)

    def _model(self, w: np.ndarray, y: np.ndarray, x: np.ndarray,
               present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, alpha, gamma = self._terms(w @ y, w @ x, present)
        return value, alpha @ y.T + gamma @ x.T

    def full_weights(self) -> np.ndarray:
        """The whole eval set as resample counts: 1 per example, or the group sizes."""
        return np.ones((1, self.n)) if self.sizes is None else self.sizes[None, :]

    def values(self) -> tuple[float, float]:
        w = self.full_weights()
        yb, xb, yt, xt = self.grouped
        vb, _ = self._model(w, yb, xb, self.present_b)
        vt, _ = self._model(w, yt, xt, self.present_t)
        return float(vb[0]), float(vt[0])

    def drop_and_se(self, w: np.ndarray, relative: bool, hib: bool,
                    grouped: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Drops and delta-method SEs of resamples given as counts ``w`` per example, or per
        group of identical examples (``grouped``: the rows of ``self.grouped``); the same sums."""
        if not grouped and w.shape[0] > 1 and self.gram is not None:
            return self._drop_and_se_gram(w, relative, hib)
        yb, xb, yt, xt = self.grouped if grouped else (self.yb, self.xb, self.yt, self.xt)
        vb, ib = self._model(w, yb, xb, self.present_b)
        vt, it = self._model(w, yt, xt, self.present_t)
        sign = 1.0 if hib else -1.0
        drop = sign * (vb - vt)
        infl = sign * (ib - it)
        if relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = drop / np.abs(vb)
                infl = (infl - (drop * np.sign(vb))[:, None] * ib) / np.abs(vb)[:, None]
        # A resample where the base value is 0 (relative drops) has an infinite influence, and
        # 0 * inf is NaN: that resample's standard error is undefined (it then counts against
        # both a PASS and a FAIL in _studentized_bounds), not a RuntimeWarning.
        with np.errstate(invalid="ignore", over="ignore"):
            var = np.sum(w * infl * infl, axis=1) / max(self.n - 1, 1)
        var = np.where(np.isfinite(var), var, np.nan)
        return drop, np.sqrt(var / self.n)

    def _terms(self, sy: np.ndarray, sx: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A model's value and the coefficients of its influence values, infl_i = alpha . y_i
        + gamma . x_i (the same linearisation as :meth:`_model`)."""
        k = float(present.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(sx > 0, sy / sx, 0.0) * present
            coef = np.where(sx > 0, present * self.n / (k * sx), 0.0)
        mean_r = r.sum(axis=1) / k
        value = np.exp(mean_r) if self.exp else mean_r
        slope = value if self.exp else np.ones_like(value)
        alpha = slope[:, None] * coef
        return value, alpha, -alpha * r

    def _drop_and_se_gram(self, w: np.ndarray, relative: bool, hib: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`drop_and_se` for per-example counts from one product with the per-example
        inputs z and the products of their centred values u = z - c: the influence of example i
        is z_i . beta, so sum_i w_i infl_i^2 = beta' G beta + 2 (c . beta) (beta . S) + n (c . beta)^2
        with G = sum w u u' and S = sum w u."""
        cols, centre, iu, ju = self.gram
        kk = self.width
        s = w @ cols
        m = 4 * kk
        sz = s[:, :m]
        vb, ab, gb = self._terms(sz[:, :kk], sz[:, kk:2 * kk], self.present_b)
        vt, at, gt = self._terms(sz[:, 2 * kk:3 * kk], sz[:, 3 * kk:], self.present_t)
        sign = 1.0 if hib else -1.0
        drop = sign * (vb - vt)
        beta = sign * np.concatenate([ab, gb, -at, -gt], axis=1)
        if relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                drop = drop / np.abs(vb)
                own = np.concatenate([ab, gb, np.zeros_like(at), np.zeros_like(gt)], axis=1)
                beta = (beta - (drop * np.sign(vb))[:, None] * own) / np.abs(vb)[:, None]
        gram = np.zeros((w.shape[0], m, m))
        gram[:, iu, ju] = s[:, m:]
        gram[:, ju, iu] = s[:, m:]
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            s_u = sz - total[:, None] * centre
            c_beta = beta @ centre
            quad = np.einsum("ri,rij,rj->r", beta, gram, beta)
            var = (quad + 2.0 * c_beta * np.sum(beta * s_u, axis=1) + total * c_beta * c_beta) / max(self.n - 1, 1)
        var = np.where(np.isfinite(var), np.maximum(var, 0.0), np.nan)
        return drop, np.sqrt(var / self.n)

    def no_change_bound(self, relative: bool, hib: bool, bounded: bool) -> Callable[[float], float]:
        """Largest drop when a fraction f of the examples changes, used only when none did.

        A changed example moves a column ratio by at most its share of the denominator times
        the largest per-unit value (1 for a metric bounded in [0, 1] per unit; the sample's
        largest |num / den| otherwise), thrice that when the denominators move too (F1)."""
        k = float(self.present_b.sum())
        share = self.xb.sum(axis=0)[self.present_b] / self.n
        per_example = float(self.xb[:, self.present_b].sum(axis=1).max())
        factor = 1.0 if self.den_fixed else 3.0
        if bounded:
            unit = 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                per_unit = np.abs(self.yb) / self.xb
            per_unit = per_unit[np.isfinite(per_unit)]
            unit = float(per_unit.max()) if per_unit.size else math.inf
        slope = factor * unit * per_example / (k * float(share.min()))
        vb, _ = self.values()

        def bound(f: float) -> float:
            move = slope * f
            if self.exp:  # exp(R + move) - exp(R), or its ratio to exp(R)
                return math.expm1(move) * (1.0 if relative else abs(vb))
            return move / (abs(vb) if relative else 1.0)

        return bound


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Resample counts per example, (rows, n), from an index matrix."""
    out = np.empty(idx.shape, dtype=float)
    for r in range(idx.shape[0]):
        out[r] = np.bincount(idx[r], minlength=n)
    return out


def _result(*, verdict: str, n: int, base: float, tuned: float, drop: float, low: float,
            high: float, margin: float, relative: bool, alpha: float, fail_alpha: float,
            hib: bool, method: str, nfr: float | None = None, pfr: float | None = None,
            settle: _Settle | None = None, note: str = "") -> Comparison:
    settle = settle if verdict == INCONCLUSIVE else None
    return Comparison(
        verdict=verdict, n=n, base=float(base), tuned=float(tuned), drop=float(drop),
        ci_low=float(low), ci_high=float(high), margin=margin, relative=relative, alpha=alpha,
        higher_is_better=hib, method=method, nfr=nfr, pfr=pfr,
        n_needed=settle.n if settle else None,
        reason=_reason(verdict, low, high, margin, drop, settle, note),
        fail_alpha=fail_alpha, settle_prob=settle.prob if settle else None,
    )


def _no_change(*, n: int, base: float, tuned: float, margin: float, relative: bool,
               alpha: float, fail_alpha: float, hib: bool, bound: Callable[[float], float],
               exact: bool, nfr: float | None = None, pfr: float | None = None) -> Comparison:
    """Nothing changed on any example. A tuned model that changed a fraction f of the examples
    shows no change with probability (1 - f)^n, so f <= 1 - alpha^(1/n) exactly; ``bound(f)``
    turns that into a bound of the drop: exact for a metric bounded per example, or from the
    sample's own range of per-example values otherwise (an assumption, stated in the method)."""
    if not (bound(1.0) > 0.0 and math.isfinite(bound(1.0))):
        return _degenerate(n=n, base=base, tuned=tuned, drop=0.0, margin=margin, relative=relative,
                           alpha=alpha, fail_alpha=fail_alpha, hib=hib, method="no-change", nfr=nfr,
                           pfr=pfr, why=("no example differs between the models and the sample "
                                         "shows no scale for a difference, so nothing is proven"))
    high = bound(_no_change_upper(n, alpha))
    low = -bound(_no_change_upper(n, fail_alpha))
    verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE:
        settle = _Settle(why="tie")
        if not _ties(0.0, margin):
            target, a_side = (margin, alpha) if margin > 0 else (-margin, fail_alpha)
            m = n + 1
            while bound(_no_change_upper(m, a_side)) >= target - _tol(margin) and m < _N_NEEDED_CAP:
                m *= 2
            if m < _N_NEEDED_CAP:
                lo_m = m // 2
                while m - lo_m > 1:
                    mid = (lo_m + m) // 2
                    if bound(_no_change_upper(mid, a_side)) < target - _tol(margin):
                        m = mid
                    else:
                        lo_m = mid
                settle = _Settle(n=max(n + 1, m), prob=1.0)
            else:
                settle = _Settle(why="cap")
    return _result(verdict=verdict, n=n, base=base, tuned=tuned, drop=0.0, low=low, high=high,
                   margin=margin, relative=relative, alpha=alpha, fail_alpha=fail_alpha, hib=hib,
                   method="exact-no-change" if exact else "no-change-sample-range", nfr=nfr,
                   pfr=pfr, settle=settle)


def _stratified_upper(counts: np.ndarray, slopes: np.ndarray, alpha: float) -> float:
    """Largest ``sum_s slopes[s] * g_s`` over fractions g with ``prod_s (1 - g_s)^counts[s] >= alpha``.

    A convex program with a closed-form solution (water-filling on the KKT conditions
    ``slopes[s] = mu * counts[s] / (1 - g_s)``): with r_s = slopes[s] / counts[s] sorted down,
    the active strata are the top m, ``log mu = (log alpha + sum n_s log r_s) / sum n_s`` over
    them, and g_s = 1 - mu / r_s. One stratum gives slope * (1 - alpha^(1/n)), Clopper-Pearson
    with nothing observed. A true drop above the returned value makes "no change in any
    stratum" happen with probability < alpha, so bounding the drop by it is exact."""
    keep = (counts > 0) & (slopes > 0)
    n_s, a_s = counts[keep].astype(float), slopes[keep].astype(float)
    if n_s.size == 0:
        return 0.0
    log_r = np.log(a_s) - np.log(n_s)
    order = np.argsort(-log_r, kind="stable")
    log_a = math.log(alpha)
    cum_n = cum = 0.0
    log_mu = 0.0
    m = 0
    for m, j in enumerate(order):
        cum_n += n_s[j]
        cum += n_s[j] * log_r[j]
        log_mu = (log_a + cum) / cum_n
        if m + 1 == order.size or log_mu >= log_r[order[m + 1]]:
            break
    active = order[: m + 1]
    return float(np.sum(a_s[active] * -np.expm1(log_mu - log_r[active])))


class _Sens(NamedTuple):
    counts: np.ndarray
    slope: np.ndarray
    slope_ref: np.ndarray
    gain_jump: float
    changed: bool
    homogeneous: bool


def _check_sensitivity(sens: Sensitivity, n: int) -> _Sens:
    codes = np.asarray(sens.strata)
    if codes.shape != (n,) or codes.dtype.kind not in "iu" or (n and codes.min() < 0):
        raise ValueError(f"Sensitivity.strata must be {n} non-negative integer codes, got {codes.dtype} {codes.shape}")
    slope = np.asarray(sens.slope, dtype=float)
    size = int(codes.max()) + 1 if n else 0
    if slope.shape != (size,) or not np.isfinite(slope).all() or (slope < 0).any():
        raise ValueError(f"Sensitivity.slope must be {size} finite non-negative numbers, got shape {slope.shape}")
    slope_t = slope if sens.slope_tuned is None else np.asarray(sens.slope_tuned, dtype=float)
    if slope_t.shape != slope.shape or not np.isfinite(slope_t).all() or (slope_t < 0).any():
        raise ValueError("Sensitivity.slope_tuned must match Sensitivity.slope")
    jump = float(sens.gain_jump)
    if not (math.isfinite(jump) and jump >= 0.0):
        raise ValueError(f"Sensitivity.gain_jump must be a finite non-negative number, got {sens.gain_jump!r}")
    keys = []
    for name in ("base_key", "tuned_key"):
        arr = np.asarray(getattr(sens, name), dtype=float)
        arr = arr.reshape(n, -1) if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"Sensitivity.{name} must have one row per example ({n}), got shape {arr.shape}")
        keys.append(arr)
    kb, kt = keys
    if kb.shape != kt.shape:
        raise ValueError(f"Sensitivity keys must have one shape, got {kb.shape} and {kt.shape}")
    changed = not np.array_equal(kb, kt)
    homogeneous = False
    if sens.reference and changed:
        first = np.zeros(size, dtype=np.int64)
        used, where = np.unique(codes, return_index=True)
        first[used] = where  # the first example of every stratum
        homogeneous = bool(np.array_equal(kb, kb[first[codes]]) and np.array_equal(kt, kt[first[codes]]))
    counts = np.bincount(codes, minlength=size).astype(float)
    return _Sens(counts, slope, slope + slope_t, jump, changed, homogeneous)


def _scaled_settle(bound_at: Callable[[float], float], n: int, target: float) -> _Settle:
    """Smallest n' > n with bound_at(n' / n) < target, for the exact stratified bounds (they
    shrink as every stratum grows in proportion)."""
    if not target > 0.0:
        return _Settle(why="tie")
    m = n + 1
    while not bound_at(m / n) < target:
        m *= 2
        if m >= _N_NEEDED_CAP:
            return _Settle(why="cap")
    lo = max(n, m // 2)
    while m - lo > 1:
        mid = (lo + m) // 2
        if bound_at(mid / n) < target:
            m = mid
        else:
            lo = mid
    return _Settle(n=max(n + 1, m), prob=1.0)


def _sensitivity_comparison(sp: _Sens, *, n: int, base: float, tuned: float, drop: float,
                            margin: float, relative: bool, alpha: float, fail_alpha: float,
                            hib: bool) -> Comparison:
    """Exact bounds from a :class:`Sensitivity`: nothing changed (the tuned model's deviation
    from the base is bounded), or every stratum homogeneous (each model's deviation from the
    sample's value is bounded; the slopes of both models add)."""
    reference = sp.changed
    slope = sp.slope_ref if reference else sp.slope
    jump_up = sp.gain_jump if reference else 0.0

    def up(scale: float) -> float:
        return _stratified_upper(sp.counts * scale, slope, alpha) + jump_up

    def down(scale: float) -> float:
        return _stratified_upper(sp.counts * scale, slope, fail_alpha) + sp.gain_jump

    center = drop if reference else 0.0
    high, low = center + up(1.0), center - down(1.0)
    verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE:
        tol = _tol(margin)
        if _ties(center, margin):
            settle = _Settle(why="tie")
        elif center < margin:
            settle = _scaled_settle(up, n, margin - center - tol)
        else:
            settle = _scaled_settle(down, n, center - margin - tol)
    return _result(verdict=verdict, n=n, base=base, tuned=tuned, drop=center, low=low, high=high,
                   margin=margin, relative=relative, alpha=alpha, fail_alpha=fail_alpha, hib=hib,
                   method="exact-reference" if reference else "exact-no-change", settle=settle)


def _degenerate(*, n: int, base: float, tuned: float, drop: float, margin: float,
                relative: bool, alpha: float, fail_alpha: float, hib: bool, method: str,
                why: str, nfr: float | None = None, pfr: float | None = None) -> Comparison:
    return _result(verdict=INCONCLUSIVE, n=n, base=base, tuned=tuned, drop=drop, low=-math.inf,
                   high=math.inf, margin=margin, relative=relative, alpha=alpha,
                   fail_alpha=fail_alpha, hib=hib, method=method, nfr=nfr, pfr=pfr,
                   settle=_Settle(why="more examples that differ in different ways would be needed"),
                   note=why)


def _check_common(max_drop: float, alpha: float, fail_alpha: float | None,
                  n_boot: int) -> tuple[float, float, float, int]:
    m = _check_margin(max_drop, "max_drop")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    return m, a, af, _check_n_boot(n_boot, (a, af))


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------


def compare_scores(
    base: Any,
    tuned: Any,
    *,
    max_drop: float,
    relative: bool = False,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    fail_alpha: float | None = None,
    n_needed: bool = True,
    score_range: tuple[float, float] | None = None,
) -> Comparison:
    """Decide whether ``tuned`` lost more than ``max_drop`` of ``base``'s metric, paired.

    ``base`` and ``tuned`` are aligned per-example scores (same examples, same order).
    0/1 scores: Tango bounds on the flip counts (absolute drop) or the paired ratio score
    interval (relative drop) -- exact pairing, no resampling. Other scores with a declared
    ``score_range=(lo, hi)`` (every score of either model lies in it): betting bounds of the
    mean difference (:mod:`pytest_forgetting.bounded`), valid at every n. Other scores without
    one: a seeded paired studentised bootstrap of the mean difference (or of the relative drop,
    linearised), which decides only from ``_MIN_UNBOUNDED_N`` examples.
    ``fail_alpha`` (default ``alpha``) is the level of the bound that backs a FAIL.
    ``n_needed=False`` skips estimating how many examples would settle an inconclusive result
    (simulations that only need the verdict). ``improves(min_gain=g)`` is this with ``max_drop=-g``.
    """
    m, a, af, n_boot = _check_common(max_drop, alpha, fail_alpha, n_boot)
    declared = _bounded.check_score_range(score_range)
    b_arr, t_arr = _as_pair(base, tuned)
    if declared is not None:
        _bounded.check_within(b_arr, *declared, "base")
        _bounded.check_within(t_arr, *declared, "tuned")
    n = int(b_arr.size)
    base_value, tuned_value = float(b_arr.mean()), float(t_arr.mean())
    hib = bool(higher_is_better)
    rel = bool(relative)
    if rel and base_value == 0.0:
        raise ValueError("relative drop is undefined: the base model's metric value is 0")
    common = dict(n=n, base=base_value, tuned=tuned_value, margin=m, relative=rel, alpha=a,
                  fail_alpha=af, hib=hib)

    nfr = pfr = None
    if declared is not None:
        return _range_comparison(b_arr, t_arr, declared, seed=seed, **common)
    binary = _is_binary(b_arr) and _is_binary(t_arr)
    if binary:
        # "good" = correct for accuracy-like scores, = 0 for error-like (lower-is-better) ones.
        good_b = b_arr == (1.0 if hib else 0.0)
        good_t = t_arr == (1.0 if hib else 0.0)
        n_neg = int(np.count_nonzero(good_b & ~good_t))
        n_pos = int(np.count_nonzero(~good_b & good_t))
        nfr, pfr = n_neg / n, n_pos / n
        if not rel:
            drop = (n_neg - n_pos) / n
            low, high = _paired_bounds(n_neg, n_pos, n, a, af)
            verdict = _decide(low, high, m)
            settle = (_tango_settle(n_neg, n_pos, n, m, a, af, seed)
                      if verdict == INCONCLUSIVE and n_needed else None)
            return _result(verdict=verdict, drop=drop, low=low, high=high, method="tango",
                           nfr=nfr, pfr=pfr, settle=settle, **common)
        return _ratio_comparison(b_arr, t_arr, nfr=nfr, pfr=pfr, **common)

    diff = b_arr - t_arr if hib else t_arr - b_arr
    drop = float(_drop_of(base_value, tuned_value, rel, hib))
    # no declared range: nothing bounds a change the sample does not show (see _MIN_UNBOUNDED_N)
    refusal = _unbounded_refusal(n, drop, dict(nfr=nfr, pfr=pfr, **common))
    if refusal is not None:
        return refusal
    if np.ptp(diff) == 0.0:
        if diff[0] == 0.0:
            spread = float(np.ptp(np.concatenate([b_arr, t_arr])))
            scale = spread / (abs(base_value) if rel else 1.0)
            return _no_change(bound=lambda f: scale * f, exact=False, **common)
        return _degenerate(drop=drop, method="bootstrap-t", why=(
            f"every example's difference is the same ({diff[0]:g}), so the bootstrap has no "
            "spread and no bound is valid"), **common)
    sqrt_n = math.sqrt(n)
    if rel:
        def batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            bb, tt = b_arr[idx], t_arr[idx]
            mb, mt = bb.mean(axis=1), tt.mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                reps = _drop_of(mb, mt, True, hib)
                d = (bb - tt) if hib else (tt - bb)
                dm = (mb - mt) if hib else (mt - mb)
                infl = ((d - dm[:, None]) - (reps * np.sign(mb))[:, None] * (bb - mb[:, None])) / np.abs(mb)[:, None]
            return reps, infl.std(axis=1, ddof=1) / sqrt_n
    else:
        def batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = diff[idx]
            return x.mean(axis=1), x.std(axis=1, ddof=1) / sqrt_n

    full = np.arange(n)[None, :]
    drop0, se0 = (float(v[0]) for v in batch(full))
    replicates, smooth = _moment_plan(b_arr, t_arr, diff, rel, hib, n_boot, seed)
    return _studentized_comparison(drop=drop0, se=se0, replicates=replicates, smooth=smooth,
                                   nfr=nfr, pfr=pfr, **common)


def _moment_replicates(b: np.ndarray, t: np.ndarray, diff: np.ndarray, rel: bool, hib: bool,
                       n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates of the mean difference (or the relative drop) and their
    delta-method SEs, from resample counts and centred moments: absolute, the mean and the
    (ddof 1) standard deviation of the differences; relative, the influence values
    ((d - mean d) - r sign(mb) (b - mb)) / |mb| whose variance is var(d - k b) / mb^2 with
    k = r sign(mb). Groups of identical examples are resampled by multinomial when few."""
    return _moment_plan(b, t, diff, rel, hib, n_boot, seed)[0]()


def _mean_smooth(b: np.ndarray, diff: np.ndarray, rel: bool) -> _SmoothMean:
    """The continuous path's drop as a function of means: mean d (absolute) or mean d / |mean b|
    (relative; d = +-(b - t) is the signed difference), with its analytic gradient."""
    if not rel:
        return _SmoothMean(diff[:, None], lambda m: (float(m[0]), np.ones(1)))

    def grad(m: np.ndarray) -> tuple[float, np.ndarray]:
        mb, md = float(m[0]), float(m[1])
        return md / abs(mb), np.array([-md * math.copysign(1.0, mb) / (mb * mb), 1.0 / abs(mb)])

    return _SmoothMean(np.stack([b, diff], axis=1), grad)


def _moment_plan(b: np.ndarray, t: np.ndarray, diff: np.ndarray, rel: bool, hib: bool, n_boot: int,
                 seed: int) -> tuple[Callable[[], tuple[np.ndarray, np.ndarray]], Callable[[], _SmoothMean] | None]:
    """(replicates, smooth) for :func:`_studentized_comparison`: the resampling of
    :func:`_moment_replicates`, run only when called, and the drop's smooth-function form when
    the resamples would draw an index per example (None when they resample a few groups)."""
    n = diff.size
    cb = 0.0
    if rel:
        d = diff
        cb, cd = float(b.mean()), float(d.mean())
        sizes = None
        if not _too_many_groups(b[:, None], t[:, None]):
            codes, first = _distinct_rows(b[:, None], t[:, None])
            sizes = _group_sizes(codes, first.size, n)
        bb, dd = (b[first], d[first]) if sizes is not None else (b, d)
        bc, dc = bb - cb, dd - cd
        cols = np.stack([bc, dc, bc * bc, dc * dc, bc * dc], axis=1)
    else:
        cd = float(diff.mean())
        sizes = None
        if not _too_many_groups(diff[:, None]):
            values, codes = np.unique(diff, return_inverse=True)
            sizes = _group_sizes(codes.reshape(-1), values.size, n)
        dc = (values if sizes is not None else diff) - cd
        cols = np.stack([dc, dc * dc], axis=1)
    smooth = (lambda: _mean_smooth(b, diff, rel)) if sizes is None else None
    return lambda: _moment_draws(cols, sizes, n, n_boot, seed, rel, hib, cb, cd), smooth


def _moment_draws(cols: np.ndarray, sizes: np.ndarray | None, n: int, n_boot: int, seed: int, rel: bool,
                  hib: bool, cb: float, cd: float) -> tuple[np.ndarray, np.ndarray]:
    """The resampling loop of :func:`_moment_replicates` over the centred moment columns."""
    sqrt_n = math.sqrt(n)
    reps, ses = [], []
    for w in _count_chunks(sizes, n, n_boot, seed, cols.shape[1]):
        s = w @ cols
        if rel:
            sb, sd, sbb, sdd, sbd = s.T
            mb = sb / n + cb
            md = sd / n + cd
            # mt from the mean difference d = +-(b - t)
            mt = mb - md if hib else mb + md
            with np.errstate(divide="ignore", invalid="ignore"):
                r = _drop_of(mb, mt, True, hib)
                k = r * np.sign(mb)
                vbb = (sbb - sb * sb / n) / (n - 1)
                vdd = (sdd - sd * sd / n) / (n - 1)
                vbd = (sbd - sb * sd / n) / (n - 1)
                var = np.maximum(vdd - 2.0 * k * vbd + k * k * vbb, 0.0)
                se = np.sqrt(var) / np.abs(mb) / sqrt_n
        else:
            sd, sdd = s.T
            r = sd / n + cd
            var = np.maximum((sdd - sd * sd / n) / (n - 1), 0.0)
            se = np.sqrt(var) / sqrt_n
        reps.append(r)
        ses.append(se)
    return np.concatenate(reps), np.concatenate(ses)


def _studentized_comparison(*, n: int, base: float, tuned: float, drop: float, se: float,
                            replicates: Callable[[], tuple[np.ndarray, np.ndarray]],
                            margin: float, relative: bool, alpha: float, fail_alpha: float, hib: bool,
                            smooth: Callable[[], _SmoothMean] | None = None,
                            nfr: float | None = None, pfr: float | None = None) -> Comparison:
    """Bootstrap-t bounds from ``replicates()`` (drops and SEs of the resamples), or, from
    _ANALYTIC_MIN_N examples when the caller gives the drop's smooth-function form (``smooth``:
    given only where resamples would draw an index per example), the same interval from its
    Edgeworth expansion (method "edgeworth-t", deterministic: no resamples, so no seed)."""
    common = dict(n=n, base=base, tuned=tuned, margin=margin, relative=relative, alpha=alpha,
                  fail_alpha=fail_alpha, hib=hib, nfr=nfr, pfr=pfr)
    if not (se > 0.0 and math.isfinite(se)):
        return _degenerate(drop=drop, method="bootstrap-t", why=(
            "the standard error of the drop is 0, so the bootstrap has no spread and no bound is valid"),
            **common)
    bounds, method = None, "bootstrap-t"
    if smooth is not None and n >= _ANALYTIC_MIN_N:
        bounds, method = _edgeworth_bounds(smooth(), drop, se, alpha, fail_alpha), "edgeworth-t"
    if bounds is None:
        reps, reps_se = replicates()
        bounds, method = _studentized_bounds(drop, se, reps, reps_se, alpha, fail_alpha), "bootstrap-t"
    low, high = bounds
    verdict = _decide(low, high, margin)
    settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha) if verdict == INCONCLUSIVE else None
    return _result(verdict=verdict, drop=drop, low=low, high=high, method=method,
                   settle=settle, **common)


def _ratio_comparison(xb: np.ndarray, xt: np.ndarray, *, n: int, base: float, tuned: float,
                      margin: float, relative: bool, alpha: float, fail_alpha: float, hib: bool,
                      nfr: float | None, pfr: float | None) -> Comparison:
    """Relative drop of a 0/1 metric from the paired ratio score interval of theta = tuned / base."""
    yb, yt = xb == 1.0, xt == 1.0
    cells = [float(np.count_nonzero(yb & yt)), float(np.count_nonzero(yb & ~yt)),
             float(np.count_nonzero(~yb & yt)), float(np.count_nonzero(~yb & ~yt))]
    nb = cells[0] + cells[1]
    zp, zf = _z(alpha), _z(fail_alpha)
    flips = cells[1] + cells[2]
    if hib:   # drop = 1 - theta: PASS needs theta's lower end, FAIL its upper end
        high = 1.0 - _ratio_bound(cells, zp, upper=False)
        low = 1.0 - _ratio_bound(cells, zf, upper=True, cc=_CC_FAIL)
        if flips == 0:   # exact, conditional on which examples the base got right
            high = max(high, _cp_upper(0.0, nb, alpha))
    else:     # drop = theta - 1
        high = _ratio_bound(cells, zp, upper=True) - 1.0
        low = _ratio_bound(cells, zf, upper=False, cc=_CC_FAIL) - 1.0
        if flips == 0 and n > nb:
            high = max(high, _cp_upper(0.0, n - nb, alpha) * (n - nb) / nb)
    drop = float(_drop_of(base, tuned, True, hib))
    low, high = min(low, drop), max(high, drop)
    verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE:
        if flips == 0 and hib and margin > 0:  # nothing flips at these rates: the exact bound decides
            need = min_n_to_pass(margin, alpha)
            settle = _Settle(n=max(n + 1, int(math.ceil(need * n / nb))), prob=1.0)
        else:
            settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha)
    return _result(verdict=verdict, n=n, base=base, tuned=tuned, drop=drop, low=low, high=high,
                   margin=margin, relative=relative, alpha=alpha, fail_alpha=fail_alpha, hib=hib,
                   method="ratio-score", nfr=nfr, pfr=pfr, settle=settle)


def compare_statistic(
    stat: Callable[[np.ndarray], tuple[float, float]] | None,
    n: int,
    *,
    max_drop: float,
    relative: bool = False,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    fail_alpha: float | None = None,
    ratio: Ratio | None = None,
    bounded: bool = False,
    n_needed: bool = True,
    sensitivity: Sensitivity | None = None,
) -> Comparison:
    """Paired bootstrap comparison of an aggregate metric (macro-F1, perplexity, ...).

    ``stat(idx)`` returns ``(base_value, tuned_value)`` computed on examples ``idx`` (with
    repetition); each bootstrap replicate hands the *same* resampled ``idx`` to both models,
    which is what pairs the comparison. Given only ``stat`` the bounds are BCa.

    ``ratio`` describes the metric as (a macro average of) ratios of per-example sums (see
    :class:`Ratio`); then the bounds are bootstrap-t with a delta-method standard error per
    resample, vectorised (``stat`` may be None; when given, it must agree with ``ratio``).
    ``bounded=True`` (a metric in [0, 1] with an absolute margin) applies the smallest-n rule
    of the 0/1 path: below ``min_n_to_pass(|max_drop|)`` the answer is INCONCLUSIVE.
    ``sensitivity`` (absolute drops only) gives the exact rules of :class:`Sensitivity`: when no
    example changed, or when every stratum's examples are identical (a bootstrap without
    spread), the bounds come from it instead of the bootstrap.
    """
    m, a, af, n_boot = _check_common(max_drop, alpha, fail_alpha, n_boot)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of examples, got {n!r}")
    n = int(n)
    hib = bool(higher_is_better)
    rel = bool(relative)
    if stat is None and ratio is None:
        raise ValueError("compare_statistic needs stat or ratio")

    def call(idx: np.ndarray) -> tuple[float, float]:
        out = stat(idx)  # type: ignore[misc]
        try:
            bv, tv = out
            return float(bv), float(tv)
        except (TypeError, ValueError):
            raise ValueError(
                f"stat(idx) must return a (base_value, tuned_value) pair of numbers, got {out!r}"
            ) from None

    parts = _RatioParts(ratio, n) if ratio is not None else None
    if stat is not None:
        base_value, tuned_value = call(np.arange(n))
    else:
        base_value, tuned_value = parts.values()  # type: ignore[union-attr]
    if not (math.isfinite(base_value) and math.isfinite(tuned_value)):
        raise ValueError(
            f"statistic is not finite on the full eval set: base={base_value}, tuned={tuned_value}"
        )
    if rel and base_value == 0.0:
        raise ValueError("relative drop is undefined: the base model's metric value is 0")
    if parts is not None and stat is not None:
        pb, pt = parts.values()
        if not (math.isclose(pb, base_value, rel_tol=1e-7, abs_tol=1e-9)
                and math.isclose(pt, tuned_value, rel_tol=1e-7, abs_tol=1e-9)):
            raise ValueError(
                f"ratio parts give base={pb:.6g}, tuned={pt:.6g} but stat gives "
                f"base={base_value:.6g}, tuned={tuned_value:.6g}: they describe different metrics"
            )
    common = dict(n=n, base=base_value, tuned=tuned_value, margin=m, relative=rel, alpha=a,
                  fail_alpha=af, hib=hib)
    with np.errstate(over="ignore"):
        drop = float(_drop_of(base_value, tuned_value, rel, hib))
    if not math.isfinite(drop):
        raise ValueError(
            f"the drop overflows to infinity (base={base_value:.6g}, tuned={tuned_value:.6g}): "
            "rescale the statistic"
        )

    if bounded and not rel and m != 0.0:
        need = min_n_to_pass(abs(m), a if m > 0 else af)
        if need is not None and n < need:
            return _refused(n, need, drop, common)

    if sensitivity is not None and not rel:
        sp = _check_sensitivity(sensitivity, n)
        if not sp.changed or sp.homogeneous:
            return _sensitivity_comparison(sp, drop=drop, **common)
    if parts is not None and not bounded:
        # an unbounded ratio (perplexity, NLL per token): as for unbounded per-example scores
        refusal = _unbounded_refusal(n, drop, common, what="an unbounded ratio metric",
                                     n_eff=_effective_size(parts.xb, parts.xt))
        if refusal is not None:
            return refusal
    if parts is not None and parts.unchanged:
        return _no_change(bound=parts.no_change_bound(rel, hib, bounded), exact=bounded, **common)
    refusal = _bootstrap_refusal(n, drop, common, n_eff=None if parts is None else _effective_size(parts.xb, parts.xt))
    if refusal is not None:
        return refusal
    if parts is not None and parts.width > 1:
        mass = min(float(parts.xb.sum(axis=0)[parts.present_b].min()),
                   float(parts.xt.sum(axis=0)[parts.present_t].min()))
        if mass < _MIN_COLUMN_MASS:
            need = int(math.ceil(n * _MIN_COLUMN_MASS / max(mass, 1.0)))
            return _refused(n, max(need, n + 1), drop, common, what=(
                f"the rarest class averaged here has only {mass:g} examples (support plus "
                f"predictions); a macro average needs at least {_MIN_COLUMN_MASS:g} per class to be "
                "decided, so no method here is valid at this n"))
    if parts is not None:
        grouped = parts.sizes is not None
        drop0, se0 = (float(v[0]) for v in parts.drop_and_se(parts.full_weights(), rel, hib, grouped=grouped))
        return _studentized_comparison(drop=drop0, se=se0, replicates=lambda: parts.replicates(rel, hib, n_boot, seed),
                                       smooth=None if grouped else (lambda: parts.smooth(rel, hib)), **common)

    def batch_stat(idx: np.ndarray) -> np.ndarray:
        pairs = np.array([call(row) for row in idx], dtype=float).reshape(-1, 2)
        return _drop_of(pairs[:, 0], pairs[:, 1], rel, hib)

    reps = _bootstrap_replicates(n, n_boot, seed, batch_stat)
    finite = reps[np.isfinite(reps)]
    if finite.size == 0 or np.ptp(finite) == 0.0:
        return _degenerate(drop=drop, method="bca", why=(
            "every resample gives the same drop, so the bootstrap has no spread and no bound is valid"),
            **common)
    bounds = _bca_bounds(drop, reps, _jackknife(call, n, rel, hib, seed), a, af)
    if bounds is None:
        return _degenerate(drop=drop, method="bca", why=(
            "every resample lies on one side of the estimate, so the bias correction is undefined"),
            **common)
    low, high = bounds
    verdict = _decide(low, high, m)
    settle = _normal_settle(n, drop, low, high, m, a, af) if verdict == INCONCLUSIVE else None
    return _result(verdict=verdict, drop=drop, low=low, high=high, method="bca", settle=settle,
                   **common)


def _refused(n: int, need: int, drop: float, common: dict[str, Any], what: str = "") -> Comparison:
    note = what or (f"n={n:,} is below {need:,}, the smallest n at which a bounded aggregate metric can "
                    f"be decided at a margin of {abs(common['margin']):g} and this alpha (no method here is valid below it)")
    return _result(verdict=INCONCLUSIVE, drop=drop, low=-math.inf, high=math.inf, method="refused",
                   settle=_Settle(n=need),
                   note=note, **common)


def _unbounded_refusal(n: int, drop: float, common: dict[str, Any], what: str = "scores",
                       n_eff: float | None = None) -> Comparison | None:
    """INCONCLUSIVE below _MIN_UNBOUNDED_N (effective) examples for a bootstrap of values with no
    known range. ``n_eff``: for a ratio of sums, Kish's effective size of its denominators,
    (sum den)^2 / sum den^2 -- a few long texts carry most of the tokens, and with them the drop."""
    eff = float(n) if n_eff is None else float(n_eff)
    if eff >= _MIN_UNBOUNDED_N:
        return None
    if n_eff is None:
        return _refused(n, _MIN_UNBOUNDED_N, drop, common, what=(
            f"n={n:,} is too small to bound a drop of {what} with no declared range: below "
            f"{_MIN_UNBOUNDED_N:,} examples a drop carried by a few of them is too often missing from the "
            "sample, so no method here is valid; declare score_range=(low, high) for a bound valid at "
            f"every n, or use at least {_MIN_UNBOUNDED_N:,} examples"))
    need = max(n + 1, int(math.ceil(n * _MIN_UNBOUNDED_N / max(eff, 1e-300))))
    return _refused(n, min(need, _N_NEEDED_CAP), drop, common, what=(
        f"the {n:,} examples weigh like {eff:,.0f} (effective size of the denominators, (sum)^2 / sum "
        f"of squares): below {_MIN_UNBOUNDED_N:,} a drop of {what} carried by a few examples is too "
        "often missing from the sample, so no method here is valid; use more examples"))


def _effective_size(*dens: np.ndarray) -> float:
    """Kish's effective sample size of per-example weights (the row sums of each denominator
    array), the smallest over the arrays: n when every example weighs the same."""
    out = math.inf
    for den in dens:
        w = den.sum(axis=1) if den.ndim == 2 else den
        sq = float(np.dot(w, w))
        out = min(out, float(w.sum()) ** 2 / sq if sq > 0 else 0.0)
    return out


def _range_comparison(b: np.ndarray, t: np.ndarray, declared: tuple[float, float], *, seed: int, n: int,
                      base: float, tuned: float, margin: float, relative: bool, alpha: float,
                      fail_alpha: float, hib: bool) -> Comparison:
    """Per-example scores in a declared range: betting bounds of the mean difference (absolute) or
    the linear test of the relative drop (:mod:`pytest_forgetting.bounded`), valid at every n."""
    lo, hi = declared
    width = hi - lo
    common = dict(n=n, base=base, tuned=tuned, margin=margin, relative=relative, alpha=alpha,
                  fail_alpha=fail_alpha, hib=hib)
    drop = float(_drop_of(base, tuned, relative, hib))
    if relative:
        tol = _tol(margin)
        low, high, passed, failed = _bounded.relative_bounds(
            b, t, lo=lo, hi=hi, hib=hib, pass_at=margin - tol, fail_at=margin + tol, alpha=alpha,
            fail_alpha=fail_alpha, seed=seed)
        verdict = PASS if passed else FAIL if failed else INCONCLUSIVE
    else:
        d = np.clip(b - t if hib else t - b, -width, width)
        if not d.any():
            # nothing changed: a changed example moves the mean by at most the width (exact rule)
            return _no_change(bound=lambda f: width * f, exact=True, **common)
        low, high = _bounded.mean_bounds(d, bound=width, margin=margin, alpha=alpha,
                                         fail_alpha=fail_alpha, seed=seed)
        low, high = min(low, drop), max(high, drop)
        verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE:
        settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha)
    return _result(verdict=verdict, drop=drop, low=low, high=high, method="betting", settle=settle, **common)


def _bootstrap_refusal(n: int, drop: float, common: dict[str, Any],
                       n_eff: float | None = None) -> Comparison | None:
    """INCONCLUSIVE below _MIN_BOOTSTRAP_N examples. ``n_eff``: for a ratio of sums (entity F1, WER,
    macro-F1), Kish's effective size of its denominators must reach it too: when a few sentences hold
    most of the entities or words, they carry the drop, and 100 sentences can weigh like 14."""
    eff = float(n) if n_eff is None else min(float(n), float(n_eff))
    if eff >= _MIN_BOOTSTRAP_N:
        return None
    if n < _MIN_BOOTSTRAP_N:
        return _refused(n, _MIN_BOOTSTRAP_N, drop, common, what=(
            f"n={n:,} is too small for a bootstrap bound: below {_MIN_BOOTSTRAP_N} examples a few "
            "examples that carry the drop are too often missing from the sample, so no method here "
            "is valid"))
    need = max(n + 1, int(math.ceil(n * _MIN_BOOTSTRAP_N / max(eff, 1e-300))))
    return _refused(n, min(need, _N_NEEDED_CAP), drop, common, what=(
        f"the {n:,} examples weigh like {eff:,.0f} (effective size of the denominators, (sum)^2 / sum "
        f"of squares): below {_MIN_BOOTSTRAP_N} a drop carried by the few examples that hold most of "
        "the weight is too often missing from the sample, so no method here is valid; use more examples"))


def _jackknife(call: Callable[[np.ndarray], tuple[float, float]], n: int, rel: bool, hib: bool,
               seed: int, groups: int = 200) -> np.ndarray:
    """Leave-one-out drops (leave-one-group-out beyond ``groups`` examples), for BCa's acceleration."""
    everything = np.arange(n)
    if n <= groups:
        blocks = [np.array([i]) for i in range(n)]
    else:
        blocks = np.array_split(np.random.default_rng(seed).permutation(n), groups)
    out = []
    for blk in blocks:
        keep = np.setdiff1d(everything, blk, assume_unique=True)
        if keep.size == 0:
            continue
        bv, tv = call(keep)
        out.append(_drop_of(bv, tv, rel, hib))
    jack = np.asarray(out, dtype=float)
    return jack[np.isfinite(jack)] if np.isfinite(jack).any() else np.zeros(1)


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------


def _class_name(label: Any, class_names: Mapping[Any, str] | Sequence[str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    try:
        i = int(label)
    except (TypeError, ValueError):
        return str(label)
    if i == label and 0 <= i < len(class_names):
        return str(class_names[i])
    return str(label)


def class_drops(
    base_correct: Any,
    tuned_correct: Any,
    labels: Any,
    *,
    limit: float,
    alpha: float = 0.05,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    fail_alpha: float | None = None,
    worst: int | None = None,
) -> list[Budget]:
    """Per-true-class recall drop budgets, worst (largest observed drop) first.

    ``worst=k`` keeps only the k classes with the largest observed drops and computes the bounds
    of those alone (plus any class tied with the k-th, whose lower bound breaks the tie): what a
    report of the worst classes needs when no class budget gates the check. The bounds are the
    same as without it (the Bonferroni split still counts every class).

    Each class is a paired 0/1 comparison on its own examples. PASS needs the upper bound of
    :func:`compare_scores`'s 0/1 path at ``alpha`` below ``limit`` for every class
    (intersection-union: no correction). FAIL needs an *exact* lower bound above ``limit``:
    the Clopper-Pearson lower bound of the negative-flip rate minus the upper bound of the
    positive-flip rate, each at ``fail_alpha / (2K)`` (Bonferroni over the K classes and the
    two rates), because "at least one class collapsed" would otherwise be found by chance
    among many small classes.
    """
    lim = _check_margin(limit, "max_class_drop")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    if bc.size != tc.size:
        raise ValueError(
            f"base_correct, tuned_correct and labels must be aligned: "
            f"got lengths {bc.size}, {tc.size} and {np.size(labels)}"
        )
    lab = _as_labels(labels, bc.size)
    # one pass of counts, then every class's bounds at once (element-wise versions of the
    # scalar bounds, same results)
    if lab.dtype.kind in "iu" and lab.size and 0 <= lab.min() and lab.max() < 4 * lab.size:
        # small non-negative integer labels: np.unique's classes and codes by one bincount (no sort)
        seen = np.bincount(lab)
        classes = np.flatnonzero(seen).astype(lab.dtype)
        lookup = np.cumsum(seen > 0) - 1
        codes = lookup[lab]
    else:
        classes, codes = np.unique(lab, return_inverse=True)
        codes = codes.reshape(-1)
    k = len(classes)
    a_each = af / (2.0 * k)
    sizes = np.bincount(codes, minlength=k)
    neg = np.bincount(codes[bc & ~tc], minlength=k)
    pos = np.bincount(codes[~bc & tc], minlength=k)
    if worst is not None:
        if isinstance(worst, bool) or not isinstance(worst, (int, np.integer)) or worst < 1:
            raise ValueError(f"worst must be a positive number of classes, got {worst!r}")
        if worst < k:
            values = (neg - pos) / sizes
            kth = np.partition(values, k - worst)[k - worst]   # the worst-th largest drop
            keep = np.flatnonzero(values >= kth)
            classes, sizes, neg, pos = classes[keep], sizes[keep], neg[keep], pos[keep]
    highs = _paired_high_arr(neg, pos, sizes, a)
    lows = _cp_lower_arr(neg, sizes, a_each) - _cp_upper_arr(pos, sizes, a_each)
    out: list[Budget] = []
    for cls, nk, b, c, low, high in zip(classes, sizes.tolist(), neg.tolist(), pos.tolist(),
                                        lows.tolist(), highs.tolist()):
        label = cls.item() if hasattr(cls, "item") else cls
        out.append(Budget(
            name=_class_name(label, class_names), value=(b - c) / nk, ci_low=low,
            ci_high=high, limit=lim, verdict=_decide(low, high, lim), n=nk,
        ))
    out.sort(key=lambda bud: (-bud.value, -bud.ci_low))
    return out if worst is None else out[:worst]


def nfr_budget(base_correct: Any, tuned_correct: Any, *, limit: float,
               alpha: float = 0.05, fail_alpha: float | None = None) -> Budget:
    """Budget on the negative-flip rate: the share of examples the base got right and the tuned
    model now gets wrong. Even with no accuracy drop, many flips mean users see new errors.
    Exact Clopper-Pearson bounds on b / n (upper at ``alpha``, lower at ``fail_alpha``), the
    same three-way rule as every other verdict.
    """
    lim = _check_margin(limit, "max_nfr")
    a = _check_alpha(alpha)
    af = _check_fail_alpha(fail_alpha, a)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    if bc.size != tc.size:
        raise ValueError(
            f"base_correct and tuned_correct must be aligned: got lengths {bc.size} and {tc.size}"
        )
    n = int(bc.size)
    b = int(np.count_nonzero(bc & ~tc))
    low, high = _cp_lower(b, n, af), _cp_upper(b, n, a)
    return Budget(name="nfr", value=b / n, ci_low=low, ci_high=high, limit=lim,
                  verdict=_decide(low, high, lim), n=n)
