"""n_needed: the n at which an inconclusive check settles with probability >= 0.8 under the
observed rates (a normal approximation, the simulated 0/1 decision itself, or the exact
stratified rule scaled up)."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

from .. import bounded as _bounded
from .paired import _CC_FAIL, _CC_PASS, _paired_bounds_vec, min_n_to_pass
from .special import _phi, _z
from .verdict import _N_NEEDED_CAP, _above, _below, _Settle, _ties, _tol

#: ``n_needed`` is the n at which the check settles with at least this probability.
_SETTLE_PROB = 0.8

#: Simulated draws used to check the settle probability behind n_needed on the count paths.
_SETTLE_DRAWS = 1000
_Z_SETTLE = NormalDist().inv_cdf(_SETTLE_PROB)

#: Declared-range (betting) path: the most (order x example) factors one n_needed search may
#: compute (well under a second).
_BET_BUDGET = 2_000_000
#: the modelled sample sits at the 15th percentile of the mean (not the 20th): the bound's own
#: spread across samples, which the model leaves out, costs about that much (simulated reruns)
_Z_BET = NormalDist().inv_cdf(0.85)


def _normal_settle(
    n: int, drop: float, low: float, high: float, margin: float, alpha: float, fail_alpha: float
) -> _Settle:
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


def _tango_settle(b: int, c: int, n: int, margin: float, alpha: float, fail_alpha: float, seed: int) -> _Settle:
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


def _betting_settle(
    d: np.ndarray, *, bound: float, margin: float, alpha: float, fail_alpha: float, seed: int, guess: _Settle
) -> _Settle:
    """n_needed on the declared-range path: the smallest n at which a sample of n drawn from the
    observed differences ``d`` settles the betting decision with probability about 0.8.

    A sample of n from ``d`` has a mean about normal with sd s / sqrt(n); it settles with
    probability 0.8 when the sample at its 20th percentile still settles. That sample is modelled
    as ``d``'s quantiles at n points (its spread), shifted by z_0.8 s / sqrt(n) toward the margin,
    and decided by the decision's own test (:func:`bounded.settles`, same bets, same seeded
    orders): one evaluation per candidate n, sizes doubling from n + 1, then a bisection.
    ``guess`` (the normal extrapolation of the bound) overstated 2.5-4x: the betting bound narrows
    faster than 1/sqrt(n) at small n, and at a few examples it is the whole range. Past
    ``_BET_BUDGET`` factors the search stops (sizes of about 100,000 and more): then ``guess``
    where no evaluated size refutes it, else "at least" the smallest size not ruled out.

    When every example's difference is the same (one example, say), the sample shows no spread:
    the answer is the smallest n at which a sample of that one difference settles, stated as a
    lower bound ("at least"), since spread only widens the bound."""
    n = int(d.size)
    drop = float(d.mean())
    if _ties(drop, margin):
        return _Settle(why="tie")
    upward = drop > margin
    tol = _tol(margin)
    at, a = (margin + tol, fail_alpha) if upward else (margin - tol, alpha)
    ordered = np.sort(d)
    s = float(np.std(d, ddof=1)) if n > 1 else 0.0
    constant = bool(ordered[0] == ordered[-1])
    spent = 0

    def ok(m: int) -> bool | None:
        nonlocal spent
        cost = _bounded.orders_at(m) * m
        if m >= _N_NEEDED_CAP or spent + cost > _BET_BUDGET:
            return None
        spent += cost
        typical = ordered[((np.arange(m) + 0.5) * (n / m)).astype(np.int64)]
        shift = _Z_BET * s / math.sqrt(m)
        y = typical - shift if upward else typical + shift
        return _bounded.settles(y, bound=bound, margin=margin, alpha=a, at=at, upward=upward, seed=seed)

    lo, hi = n, n + 1
    res = ok(hi)
    while res is False:  # double until a size settles
        lo, hi = hi, 2 * hi
        res = ok(hi)
    if res is None:  # out of budget: the normal extrapolation where no size evaluated refutes it
        if guess.n is not None and guess.n > lo:
            return guess
        return _Settle(n=lo + 1, prob=None) if lo > n else guess
    while hi - lo > (1 if constant else max(1, hi // 64)):  # then bisect down
        mid = (lo + hi) // 2
        r_mid = ok(mid)
        if r_mid is None:
            break
        if r_mid:
            hi = mid
        else:
            lo = mid
    return _Settle(n=max(n + 1, hi), prob=None if constant else _SETTLE_PROB)
