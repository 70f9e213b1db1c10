"""Exact bounds when nothing changed: the no-change rule (a tuned model that changed a fraction f of
the examples shows no change with probability (1 - f)^n) and the stratified rule of a
:class:`Sensitivity` (also when every stratum's examples are identical)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .paired import _no_change_upper
from .settle import _scaled_settle
from .verdict import (
    _N_NEEDED_CAP,
    INCONCLUSIVE,
    Comparison,
    Sensitivity,
    _decide,
    _degenerate,
    _result,
    _Settle,
    _ties,
    _tol,
)


def _no_change(
    *,
    n: int,
    base: float,
    tuned: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
    bound: Callable[[float], float],
    exact: bool,
    nfr: float | None = None,
    pfr: float | None = None,
) -> Comparison:
    """Nothing changed on any example. A tuned model that changed a fraction f of the examples
    shows no change with probability (1 - f)^n, so f <= 1 - alpha^(1/n) exactly; ``bound(f)``
    turns that into a bound of the drop: exact for a metric bounded per example (for a
    :class:`Ratio`, exact conditional on the eval set's denominators, which set how far one
    changed example moves it: :meth:`_RatioParts.no_change_bound`), or from the sample's own
    range of per-example values otherwise (an assumption, stated in the method)."""
    if not (bound(1.0) > 0.0 and math.isfinite(bound(1.0))):
        return _degenerate(
            n=n,
            base=base,
            tuned=tuned,
            drop=0.0,
            margin=margin,
            relative=relative,
            alpha=alpha,
            fail_alpha=fail_alpha,
            hib=hib,
            method="no-change",
            nfr=nfr,
            pfr=pfr,
            why=(
                "no example differs between the models and the sample "
                "shows no scale for a difference, so nothing is proven"
            ),
        )
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
    return _result(
        verdict=verdict,
        n=n,
        base=base,
        tuned=tuned,
        drop=0.0,
        low=low,
        high=high,
        margin=margin,
        relative=relative,
        alpha=alpha,
        fail_alpha=fail_alpha,
        hib=hib,
        method="exact-no-change" if exact else "no-change-sample-range",
        nfr=nfr,
        pfr=pfr,
        settle=settle,
    )


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


def _sensitivity_comparison(
    sp: _Sens,
    *,
    n: int,
    base: float,
    tuned: float,
    drop: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
) -> Comparison:
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
    return _result(
        verdict=verdict,
        n=n,
        base=base,
        tuned=tuned,
        drop=center,
        low=low,
        high=high,
        margin=margin,
        relative=relative,
        alpha=alpha,
        fail_alpha=fail_alpha,
        hib=hib,
        method="exact-reference" if reference else "exact-no-change",
        settle=settle,
    )
