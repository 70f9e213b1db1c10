"""Special functions, no scipy at run time: normal quantiles, the regularised incomplete beta and its
quantile, and the exact Clopper-Pearson bounds of a proportion (scalar, and element-wise over arrays).

The beta quantiles are the continued fraction of the regularised incomplete beta, then safeguarded
Newton steps inside a bisection bracket; the tests check them against scipy."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from .validation import _check_alpha

if TYPE_CHECKING:
    from numpy.typing import NDArray


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
        for coeff in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
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
        for coeff in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
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
    x: NDArray[np.float64] = a / (a + b)
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
            step = np.where(
                (tail > 0.0) & np.isfinite(ratio) & (ratio > 0.0),
                xi * np.exp(-g / (xi * ratio)) if lower_tail else xi + g / ratio,
                np.nan,
            )
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
