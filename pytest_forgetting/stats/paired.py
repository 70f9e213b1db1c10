"""Bounds of paired 0/1 outcomes: Tango's (1998) score interval of a difference of paired
proportions and the bounds the 0/1 verdict rests on (scalar, vectorised for simulations, element-wise
for class_drops), the score interval of the ratio of paired proportions (Nam and Blackwelder 2002;
Tang, Tang and Chan 2003), Wilson's interval (reference only), and the exact no-change bound with
:func:`min_n_to_pass`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .special import _cp_upper, _cp_upper_arr, _z
from .validation import _check_alpha, _check_margin
from .verdict import _below

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Tango's statistic is infinite at the edges of [-1, 1]; clip it so the root finder only ever
#: sees finite numbers (any value this large is far beyond any z we use).
_Z_CLIP = 1e8

#: Continuity corrections (in counts) of the 0/1 score bounds: the bound that backs a FAIL and
#: the one that backs a PASS. Chosen by exact enumeration over the whole nuisance range
#: (margins 0.02 / 0.05 / 0.1, n up to 500; tests/test_calibration_fast.py keeps a few cells):
#: plain Tango reaches 0.060 false PASS and 0.061 false FAIL; 0.5 on the FAIL side alone still
#: leaves 0.061 (n=50, margin 0.1, few positive flips); 1.0 on both sides keeps every computed
#: cell <= alpha (max 0.0493), at a cost of about 0.03 in PASS power at n=1000.
_CC_FAIL = 1.0
_CC_PASS = 1.0

#: Continuity correction (in counts) of the PASS-side end of the ratio score interval (relative
#: drops of 0/1 metrics; its FAIL-side end takes ``_CC_FAIL``): half a step of the numerator
#: n_t - theta * n_b, whose values move by 1 (a pair tuned-only right) or theta ~ 1 (base-only
#: right) -- Yates' half-unit correction. Exact enumeration of every 2x2 table (n 50 / 100 / 150 /
#: 300, base values 0.5 to 0.95 either direction, margins 0.02 / 0.05 / 0.1, the whole churn
#: range; tests/unit/test_relative_exact.py keeps three cells): the plain bound passes up to
#: 0.062 at the margin (n = 50, error rate 0.05, margin 0.02; still 0.052 at n = 300), with 0.5
#: at most 0.049 (n = 300, base 0.5, churn 0.49), at a cost of 0.01-0.03 in PASS power at n = 1000.
_CC_RATIO_PASS = 0.5


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
    out: NDArray[np.float64] = 0.5 * (lo + hi)
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
    high: NDArray[np.float64] = np.where(c == 0, high0, np.minimum(up_bc, high0))
    return high


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


def _paired_bounds_vec(
    b: np.ndarray, c: np.ndarray, n: float, alpha: float, fail_alpha: float
) -> tuple[np.ndarray, np.ndarray]:
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


def ratio_score_interval(n11: int, n10: int, n01: int, n00: int, alpha: float = 0.05) -> tuple[float, float]:
    """Score interval of theta = P(tuned = 1) / P(base = 1) for paired 0/1 outcomes.

    Cells: ``n11`` both 1, ``n10`` base 1 and tuned 0, ``n01`` base 0 and tuned 1, ``n00`` both 0.
    The statistic is the score test of the multinomial under theta (Nam and Blackwelder 2002;
    Tang, Tang and Chan 2003) with the nuisance parameters at their restricted MLE; two-sided
    at 1 - 2*alpha, so each end is a one-sided bound at alpha. No continuity correction (the
    decision adds one on each side: ``_CC_RATIO_PASS`` and ``_CC_FAIL``).
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


#: no eval set is larger: a margin that needs more examples than this (one within the tie tolerance of 0) never passes
_MAX_PASS_N = 2**53


def min_n_to_pass(max_drop: float, alpha: float = 0.05) -> int | None:
    """Smallest eval-set size at which even two *identical* models could PASS a bounded metric.

    With nothing changed the upper bound of the drop is the exact 1 - alpha^(1/n) (a tuned
    model that changed a fraction ``max_drop`` of the answers shows no change with
    probability (1 - max_drop)^n); below the returned n no sample can pass, so the plugin
    rejects such a marker at collection time instead of loading two checkpoints to report
    INCONCLUSIVE. Returns None when ``max_drop <= 0``, or when it is so small that no n below
    2^53 passes (a margin within the float tie tolerance of 0): then nothing can pass. At
    max_drop = 0.02 and alpha = 0.05 this is 149.
    """
    a = _check_alpha(alpha)
    m = _check_margin(max_drop, "max_drop")
    if m <= 0.0:
        return None
    if m >= 1.0:
        return 1

    def passes(k: int) -> bool:  # the floating-point rule the comparisons apply (tie tolerance included)
        return bool(_below(_no_change_upper(k, a), m))

    # Closed form n > log(alpha) / log(1 - m), then the exact boundary of the rule by bisection (the
    # bound falls with n): a margin within the tie tolerance of 0 passes at no n below _MAX_PASS_N.
    guess = math.log(a) / math.log1p(-m)  # inf for a subnormal margin
    n = int(min(max(1.0, guess + 1.0), float(_MAX_PASS_N)))
    if passes(n):
        if n == 1 or not passes(n - 1):
            return n
        low, high = 0, n  # passes(high); low fails (0 stands for "below 1")
    else:
        low, high = n, n
        while not passes(high):
            if high >= _MAX_PASS_N:
                return None
            low, high = high, min(2 * high, _MAX_PASS_N)
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return high
