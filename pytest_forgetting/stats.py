"""The statistical decision core of pytest-forgetting (pure: numpy and the standard library, no I/O, no torch, no scipy).

The question every marker asks is *non-inferiority on paired data*: did the fine-tuned model
lose more than ``margin`` of a metric its base model had, measured on the **same** examples?
Pairing matters: two models evaluated on one eval set are strongly correlated, and a test that
ignores that (two independent proportions) is far too conservative, while a test that only
looks at the point estimate ("the drop was 0.019 <= 0.02, ship it") is wrong half the time
exactly at the margin. So every verdict here is made from a confidence interval of the drop:

* PASS          -- the one-sided upper bound at level ``alpha`` is below the margin;
* FAIL          -- the one-sided lower bound at level ``alpha`` is above the margin;
* INCONCLUSIVE  -- neither; we also estimate how many examples would settle it.

The two-sided ``1 - 2*alpha`` interval reported in :class:`Comparison` has exactly those two
one-sided bounds as its ends, so the printed interval is the evidence behind the verdict.

For per-example 0/1 metrics (correct / wrong) the interval is Tango's (1998) score interval for
a difference of paired proportions, which keeps close to its nominal level even for small
discordance counts (where Wald intervals collapse to zero width). For everything else --
continuous per-example scores, relative drops, aggregate metrics such as macro-F1 or perplexity --
a seeded paired bootstrap is used, so that results are reproducible run to run.

Reference: T. Tango (1998), "Equivalence test and confidence interval for the difference in
proportions for the paired-sample design", Statistics in Medicine 17, 891-908.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statistics import NormalDist

import numpy as np

__all__ = [
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "Comparison",
    "Budget",
    "tango_interval",
    "wilson_bounds",
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

#: Bootstrap index matrices are generated in chunks of at most this many entries, so memory
#: stays bounded (~16 MB of indices) whatever n and n_boot are.
_CHUNK_ENTRIES = 2_000_000

#: Tango's statistic is infinite at the edges of [-1, 1]; clip it so the root finder only ever
#: sees finite numbers (any value this large is far beyond any z we use).
_Z_CLIP = 1e8


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Outcome of one paired base-vs-tuned comparison.

    ``drop`` is signed so that positive always means *worse* (base - tuned for
    higher-is-better metrics, tuned - base for lower-is-better ones; divided by ``|base|``
    when ``relative``). ``ci_low``/``ci_high`` are the ends of the two-sided ``1 - 2*alpha``
    interval of the drop, i.e. the one-sided bounds at ``alpha`` on which the verdict rests.
    ``margin`` is the largest tolerated drop (negative for "must improve by at least g").
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


@dataclass(frozen=True)
class Budget:
    """One secondary budget (per-class recall drop, negative-flip rate) and its verdict.

    ``value`` is the observed quantity; ``ci_low``/``ci_high`` are the bounds the verdict was
    decided on. For :func:`class_drops` the lower bound is Bonferroni-corrected over the
    classes (it backs a FAIL, and "some class regressed" is a union of K claims) while the
    upper bound is not (a PASS needs every class to pass, an intersection, which needs no
    correction).
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    limit: float
    verdict: str
    n: int


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    """Reject error rates that make no sense for a one-sided bound (and NaN)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    return a


def _check_margin(value: float, what: str) -> float:
    """Margins and limits must be finite numbers; NaN would silently make every test inconclusive."""
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(m):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return m


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
    return b, t


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


def _as_correct(x: Any, what: str) -> np.ndarray:
    """0/1 (or bool) correctness vector -> bool array."""
    arr = _as_scores(x, what)
    if not _is_binary(arr):
        raise ValueError(f"{what} must contain only 0/1 (correct/wrong) values")
    return arr.astype(bool)


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------


def _z(alpha: float) -> float:
    # statistics.NormalDist rather than scipy.stats.norm: the same quantile to ~1e-16 (Wichura's
    # AS241), without the ~1.5 s scipy.stats import every pytest run would pay at start-up.
    return NormalDist().inv_cdf(1.0 - alpha)


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


def _tango_score(delta: float, b: float, c: float, n: float) -> float:
    """Tango's score statistic for H0: p12 - p21 = delta (p12 = P(negative flip)).

    The nuisance parameter p21 is replaced by its maximum-likelihood value under H0, the
    positive root of 2n q^2 + B q + C = 0. We use the cancellation-free form of that root
    because B is large and C tiny near delta = 0, where the naive formula loses all digits.
    """
    num = b - c - n * delta
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


def _tango_lower(b: float, c: float, n: float, z: float) -> float:
    """Lower end of Tango's interval: the delta below the estimate where T(delta) = z.

    T decreases in delta, is 0 at the point estimate and +inf at delta = -1, so the root is
    bracketed by [-1, estimate].
    """
    dhat = (b - c) / n
    if b == 0.0 and c == 0.0:
        # No discordant pairs: T^2 = n|d| / (1 - |d|) in closed form, so the end is exact.
        return -(z * z / (n + z * z))
    if dhat == -1.0:
        return -1.0

    def f(delta: float) -> float:
        # At the estimate the statistic is 0 by definition; evaluating it there would divide
        # 0 by a variance that can also be 0 (all pairs flipped one way).
        if delta == dhat:
            return -z
        return _tango_score(delta, b, c, n) - z

    return _decreasing_root(f, -1.0, dhat)


def _tango_bound(b: float, c: float, n: float, z: float, upper: bool) -> float:
    """One end of Tango's interval. The upper end is computed as the mirrored lower end of
    the swapped counts, so that swapping the two models mirrors the interval *exactly*
    (not just up to root-finder tolerance) -- a verdict must not depend on argument order."""
    if upper:
        return -_tango_lower(c, b, n, z)
    return _tango_lower(b, c, n, z)


def tango_interval(b: float, c: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Tango (1998) score interval of delta = (b - c) / n for paired 0/1 outcomes.

    ``b`` counts pairs where the base model was right and the tuned one wrong (negative flips),
    ``c`` the opposite (positive flips), ``n`` all pairs. The interval is two-sided at level
    ``1 - 2*alpha`` (z = Phi^-1(1 - alpha)), so each end is a one-sided bound at ``alpha``.
    Counts may be real-valued: :func:`compare_scores` extrapolates them to larger n to estimate
    how many examples an inconclusive comparison needs.
    """
    a = _check_alpha(alpha)
    b, c, n = float(b), float(c), float(n)
    if not (math.isfinite(b) and math.isfinite(c) and math.isfinite(n)):
        raise ValueError(f"counts must be finite, got b={b}, c={c}, n={n}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}: no pairs to compare")
    if b < 0 or c < 0 or b + c > n * (1 + 1e-12):
        raise ValueError(f"need 0 <= b, c and b + c <= n, got b={b}, c={c}, n={n}")
    z = _z(a)
    return _tango_bound(b, c, n, z, upper=False), _tango_bound(b, c, n, z, upper=True)


def wilson_bounds(k: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a single proportion k/n, two-sided at level 1 - 2*alpha.

    Used for the negative-flip-rate budget: unlike the Wald interval it does not collapse to
    [0, 0] when no flip was observed, which would make "0 flips in 20 examples" look proven.
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


def _identical_upper(n: int, z: float) -> float:
    """Upper Tango bound for two identical 0/1 vectors of length n (no discordant pairs)."""
    return z * z / (n + z * z)


def min_n_to_pass(max_drop: float, alpha: float = 0.05) -> int | None:
    """Smallest eval-set size at which even two *identical* 0/1 models could PASS.

    With no discordant pairs the upper bound is z^2 / (n + z^2); an eval set smaller than the
    returned n can never pass whatever the models do, so the plugin rejects such a marker at
    collection time instead of loading two checkpoints to report INCONCLUSIVE. Returns None
    when ``max_drop <= 0``: then nothing can pass (ties with the margin are inconclusive).
    """
    a = _check_alpha(alpha)
    m = _check_margin(max_drop, "max_drop")
    if m <= 0.0:
        return None
    z = _z(a)
    # Closed form, then nudge so it agrees exactly with the floating-point bound that
    # compare_scores will compute.
    n = max(1, int(math.floor(z * z * (1.0 - m) / m)) + 1)
    while n > 1 and _identical_upper(n - 1, z) < m:
        n -= 1
    while not _identical_upper(n, z) < m:
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


def _decide(low: float, high: float, limit: float) -> str:
    """Three-way rule; a bound equal to the limit proves nothing, hence INCONCLUSIVE."""
    if high < limit:
        return PASS
    if low > limit:
        return FAIL
    return INCONCLUSIVE


def _fmt_pair(x: float, y: float) -> tuple[str, str]:
    """Format two numbers with enough decimals that they do not print as equal when unequal."""
    for digits in range(3, 10):
        sx, sy = f"{x:.{digits}f}", f"{y:.{digits}f}"
        distinct = sx != sy or x == y
        # "-0.000" for -0.0002 hides the sign that matters; add digits until it shows.
        visible = all(v == 0.0 or float(s) != 0.0 for v, s in ((x, sx), (y, sy)))
        if distinct and visible:
            return sx, sy
    return f"{x:.3g}", f"{y:.3g}"


def _reason(verdict: str, low: float, high: float, margin: float, n_needed: int | None,
            drop: float) -> str:
    if verdict == PASS:
        hs, ms = _fmt_pair(high, margin)
        return f"upper bound of the drop {hs} < margin {ms}"
    if verdict == FAIL:
        ls, ms = _fmt_pair(low, margin)
        return f"lower bound of the drop {ls} > margin {ms} (proven regression)"
    ls, hs = _fmt_pair(low, high)
    _, ms = _fmt_pair(drop, margin)
    head = f"interval [{ls}, {hs}] contains the margin {ms}"
    if n_needed is not None:
        return f"{head}; about {n_needed:,} examples would settle it"
    if drop == margin:
        return f"{head}; the observed drop equals the margin, so no sample size would settle it"
    return f"{head}; more than {_N_NEEDED_CAP:,} examples would be needed to settle it"


def combine_verdicts(*verdicts: str) -> str:
    """Combine component verdicts: fail > inconclusive > pass.

    PASS only when every component passes (an intersection-union test, which needs no
    multiplicity correction); any proven failure fails the whole.
    """
    if not verdicts:
        raise ValueError("combine_verdicts needs at least one verdict")
    for v in verdicts:
        if v not in _SEVERITY:
            raise ValueError(f"unknown verdict {v!r}; expected one of {sorted(_SEVERITY)}")
    return max(verdicts, key=_SEVERITY.__getitem__)


# --------------------------------------------------------------------------------------------
# n_needed extrapolation
# --------------------------------------------------------------------------------------------


def _smallest_n(n: int, settles: Callable[[int], bool]) -> int | None:
    """Smallest n' > n with settles(n') (assumed monotone), by doubling then integer bisection."""
    lo = n  # known not to settle (the comparison is inconclusive at n)
    hi = max(2 * n, n + 1)
    while not settles(hi):
        if hi >= _N_NEEDED_CAP:
            return None
        lo = hi
        hi = min(2 * hi, _N_NEEDED_CAP)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if settles(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _tango_n_needed(b: int, c: int, n: int, z: float, margin: float) -> int | None:
    """Total n at which the same flip *rates* would give a PASS/FAIL, or None if none would."""
    dhat = (b - c) / n
    if dhat == margin:
        return None
    upper = dhat < margin
    rb, rc = b / n, c / n

    def settles(m: int) -> bool:
        bound = _tango_bound(rb * m, rc * m, float(m), z, upper=upper)
        return bound < margin if upper else bound > margin

    return _smallest_n(n, settles)


def _bootstrap_n_needed(drop: float, low: float, high: float, n: int, margin: float) -> int | None:
    """Shrink the observed half-width like 1/sqrt(n) until the interval clears the margin."""
    if drop == margin:
        return None
    half, gap = (high - drop, margin - drop) if drop < margin else (drop - low, drop - margin)
    if not math.isfinite(half):
        return None
    if half <= 0.0:  # pragma: no cover - a zero-width interval off the margin is never inconclusive
        return None
    need = n * (half / gap) ** 2
    if not need < _N_NEEDED_CAP:
        return None
    return max(n + 1, int(math.floor(need)) + 1)


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------


def _drop_of(base: Any, tuned: Any, relative: bool, higher_is_better: bool) -> Any:
    """The signed drop (positive = worse); works on scalars and on arrays of replicates."""
    diff = base - tuned if higher_is_better else tuned - base
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            return diff / np.abs(base)
    return diff


def _bootstrap_replicates(n: int, n_boot: int, seed: int,
                          batch: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Seeded paired bootstrap: ``batch`` maps an (rows, n) index matrix to rows drop replicates.

    One index matrix serves both models, which is what makes the bootstrap paired. Chunking
    keeps memory bounded; the chunk size depends only on n, so results depend only on the seed.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // n)
    out = np.empty(n_boot, dtype=float)
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        idx = rng.integers(0, n, size=(k, n))
        out[done:done + k] = batch(idx)
        done += k
    return out


def _percentile_interval(reps: np.ndarray, drop: float, alpha: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, always containing the point estimate.

    Order statistics (no interpolation) keep infinite replicates -- a resample whose base
    value is 0 under ``relative`` -- meaningful; an undefined replicate counts against both a
    PASS and a FAIL. Widening to include the point estimate stops a biased statistic (the
    bootstrap of macro-F1 is) from passing a drop it actually observed above the margin.
    """
    undefined = np.isnan(reps)
    lo_reps = np.where(undefined, -np.inf, reps)
    hi_reps = np.where(undefined, np.inf, reps)
    # The k-th smallest and the k-th largest replicate: symmetric by construction, so
    # swapping the models mirrors the interval exactly.
    size = reps.size
    k = int(math.floor(alpha * (size - 1)))
    low = float(np.partition(lo_reps, k)[k])
    high = float(np.partition(hi_reps, size - 1 - k)[size - 1 - k])
    return min(low, drop), max(high, drop)


def _bootstrap_comparison(
    *,
    n: int,
    base_value: float,
    tuned_value: float,
    batch: Callable[[np.ndarray], np.ndarray],
    margin: float,
    relative: bool,
    alpha: float,
    higher_is_better: bool,
    seed: int,
    n_boot: int,
    nfr: float | None = None,
    pfr: float | None = None,
) -> Comparison:
    """Everything the bootstrap paths of compare_scores and compare_statistic share."""
    if relative and base_value == 0.0:
        raise ValueError("relative drop is undefined: the base model's metric value is 0")
    # The point estimate goes through the very function the replicates do (on the identity
    # resample), so a zero-width bootstrap sits exactly on it, bit for bit.
    drop = float(batch(np.arange(n)[None, :])[0])
    reps = _bootstrap_replicates(n, n_boot, seed, batch)
    low, high = _percentile_interval(reps, drop, alpha)
    verdict = _decide(low, high, margin)
    n_needed = _bootstrap_n_needed(drop, low, high, n, margin) if verdict == INCONCLUSIVE else None
    return Comparison(
        verdict=verdict, n=n, base=float(base_value), tuned=float(tuned_value), drop=drop,
        ci_low=low, ci_high=high, margin=margin, relative=relative, alpha=alpha,
        higher_is_better=higher_is_better, method="bootstrap", nfr=nfr, pfr=pfr,
        n_needed=n_needed, reason=_reason(verdict, low, high, margin, n_needed, drop),
    )


def _check_common(max_drop: float, alpha: float, n_boot: int) -> tuple[float, float, int]:
    m = _check_margin(max_drop, "max_drop")
    a = _check_alpha(alpha)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    return m, a, int(n_boot)


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
) -> Comparison:
    """Decide whether ``tuned`` lost more than ``max_drop`` of ``base``'s metric, paired.

    ``base`` and ``tuned`` are aligned per-example scores (same examples, same order). 0/1
    scores with an absolute margin use Tango's interval on the flip counts (exact pairing, no
    resampling noise); anything else uses a seeded paired bootstrap of the mean difference
    (or of the relative drop). ``improves(min_gain=g)`` is this with ``max_drop=-g``.
    """
    m, a, n_boot = _check_common(max_drop, alpha, n_boot)
    b_arr, t_arr = _as_pair(base, tuned)
    n = int(b_arr.size)
    base_value, tuned_value = float(b_arr.mean()), float(t_arr.mean())
    hib = bool(higher_is_better)

    nfr = pfr = None
    binary = _is_binary(b_arr) and _is_binary(t_arr)
    if binary:
        # "good" = correct for accuracy-like scores, = 0 for error-like (lower-is-better) ones.
        good_b = b_arr == (1.0 if hib else 0.0)
        good_t = t_arr == (1.0 if hib else 0.0)
        n_neg = int(np.count_nonzero(good_b & ~good_t))
        n_pos = int(np.count_nonzero(~good_b & good_t))
        nfr, pfr = n_neg / n, n_pos / n

    if binary and not relative:
        z = _z(a)
        drop = (n_neg - n_pos) / n
        low = _tango_bound(n_neg, n_pos, n, z, upper=False)
        high = _tango_bound(n_neg, n_pos, n, z, upper=True)
        verdict = _decide(low, high, m)
        n_needed = _tango_n_needed(n_neg, n_pos, n, z, m) if verdict == INCONCLUSIVE else None
        return Comparison(
            verdict=verdict, n=n, base=base_value, tuned=tuned_value, drop=drop,
            ci_low=low, ci_high=high, margin=m, relative=False, alpha=a,
            higher_is_better=hib, method="tango", nfr=nfr, pfr=pfr, n_needed=n_needed,
            reason=_reason(verdict, low, high, m, n_needed, drop),
        )

    if relative:
        def batch(idx: np.ndarray) -> np.ndarray:
            return _drop_of(np.take(b_arr, idx).mean(axis=1), np.take(t_arr, idx).mean(axis=1),
                            True, hib)
    else:
        # The mean of the differences is the difference of the means; one gather instead of two.
        diff = b_arr - t_arr if hib else t_arr - b_arr

        def batch(idx: np.ndarray) -> np.ndarray:
            return np.take(diff, idx).mean(axis=1)

    return _bootstrap_comparison(
        n=n, base_value=base_value, tuned_value=tuned_value, batch=batch, margin=m,
        relative=bool(relative), alpha=a, higher_is_better=hib, seed=seed, n_boot=n_boot,
        nfr=nfr, pfr=pfr,
    )


def compare_statistic(
    stat: Callable[[np.ndarray], tuple[float, float]],
    n: int,
    *,
    max_drop: float,
    relative: bool = False,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
) -> Comparison:
    """Paired bootstrap comparison of an aggregate metric (macro-F1, perplexity, ...).

    ``stat(idx)`` returns ``(base_value, tuned_value)`` computed on examples ``idx`` (with
    repetition). The point estimate uses ``idx = arange(n)``; each bootstrap replicate hands
    the *same* resampled ``idx`` to both models, which is what pairs the comparison. With the
    same seed, a ``stat`` that returns the two means reproduces :func:`compare_scores`.
    """
    m, a, n_boot = _check_common(max_drop, alpha, n_boot)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of examples, got {n!r}")
    n = int(n)
    hib = bool(higher_is_better)
    rel = bool(relative)

    def call(idx: np.ndarray) -> tuple[float, float]:
        out = stat(idx)
        try:
            bv, tv = out
            return float(bv), float(tv)
        except (TypeError, ValueError):
            raise ValueError(
                f"stat(idx) must return a (base_value, tuned_value) pair of numbers, got {out!r}"
            ) from None

    base_value, tuned_value = call(np.arange(n))
    if not (math.isfinite(base_value) and math.isfinite(tuned_value)):
        raise ValueError(
            f"statistic is not finite on the full eval set: base={base_value}, tuned={tuned_value}"
        )

    def batch(idx: np.ndarray) -> np.ndarray:
        pairs = np.array([call(row) for row in idx], dtype=float).reshape(-1, 2)
        return _drop_of(pairs[:, 0], pairs[:, 1], rel, hib)

    return _bootstrap_comparison(
        n=n, base_value=base_value, tuned_value=tuned_value, batch=batch, margin=m,
        relative=rel, alpha=a, higher_is_better=hib, seed=seed, n_boot=n_boot,
    )


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
) -> list[Budget]:
    """Per-true-class recall drop budgets, worst (largest observed drop) first.

    Each class is a paired 0/1 comparison on its own examples (Tango interval). PASS needs
    the uncorrected upper bound below ``limit`` (every class must pass: intersection-union);
    FAIL needs the lower bound at ``alpha / K`` above ``limit`` (Bonferroni over the K
    classes, because "at least one class collapsed" would otherwise be found by chance).
    """
    lim = _check_margin(limit, "max_class_drop")
    a = _check_alpha(alpha)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {lab.shape}")
    if not (bc.size == tc.size == lab.size):
        raise ValueError(
            f"base_correct, tuned_correct and labels must be aligned: "
            f"got lengths {bc.size}, {tc.size} and {lab.size}"
        )
    classes = np.unique(lab)
    k = len(classes)
    z = _z(a)
    z_fail = _z(a / k)
    out: list[Budget] = []
    for cls in classes:
        mask = lab == cls
        nk = int(mask.sum())
        b = int(np.count_nonzero(bc[mask] & ~tc[mask]))
        c = int(np.count_nonzero(~bc[mask] & tc[mask]))
        low = _tango_bound(b, c, nk, z_fail, upper=False)
        high = _tango_bound(b, c, nk, z, upper=True)
        label = cls.item() if hasattr(cls, "item") else cls
        out.append(Budget(
            name=_class_name(label, class_names), value=(b - c) / nk, ci_low=low,
            ci_high=high, limit=lim, verdict=_decide(low, high, lim), n=nk,
        ))
    out.sort(key=lambda bud: (-bud.value, -bud.ci_low))
    return out


def nfr_budget(base_correct: Any, tuned_correct: Any, *, limit: float,
               alpha: float = 0.05) -> Budget:
    """Budget on the negative-flip rate: the share of examples the base got right and the tuned
    model now gets wrong. Even with no accuracy drop, many flips mean users see new errors.
    Wilson bounds on b / n, the same three-way rule as every other verdict.
    """
    lim = _check_margin(limit, "max_nfr")
    a = _check_alpha(alpha)
    bc = _as_correct(base_correct, "base_correct")
    tc = _as_correct(tuned_correct, "tuned_correct")
    if bc.size != tc.size:
        raise ValueError(
            f"base_correct and tuned_correct must be aligned: got lengths {bc.size} and {tc.size}"
        )
    n = int(bc.size)
    b = int(np.count_nonzero(bc & ~tc))
    low, high = wilson_bounds(b, n, a)
    return Budget(name="nfr", value=b / n, ci_low=low, ci_high=high, limit=lim,
                  verdict=_decide(low, high, lim), n=n)
