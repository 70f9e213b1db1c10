"""Fixed-n confidence bounds for the mean of *bounded* paired differences, by betting.

Pure numpy and the standard library. Used by :func:`pytest_forgetting.stats.compare_scores` when
the per-example scores have a declared range ``score_range=(lo, hi)`` (or a metric's natural one):
then every paired difference lies in ``[-B, B]`` with ``B = hi - lo``, and the bounds below hold
at **every** n, for every distribution on that range -- no asymptotics, no skewness assumption.
Without a range no such bound exists for a mean (Bahadur and Savage 1956): a rare, large change
can always hide from the sample.

The bounds are those of the betting confidence sequence of :mod:`pytest_forgetting.sequential`
(Waudby-Smith and Ramdas 2023, JRSS-B 85: capital processes with predictable bets, aGRAPA aimed
at the margin mixed with a plug-in bet), evaluated once, at the full sample, and averaged over a
few seeded orders of the examples:

* For any fixed order independent of the scores (a seeded permutation), the capital K+(m) of the
  bet on "the mean is above m" is a nonnegative supermartingale with K+_0 = 1 when the mean is at
  most m, so E K+_n(m) <= 1.
* The average of R such capitals (one per seeded order) still has expectation <= 1, so by
  Markov's inequality P(average >= 1/alpha) <= alpha: the test "reject mean <= m when the average
  capital reaches 1/alpha" has level alpha at the fixed n (the average is not a supermartingale
  in time, so this is a fixed-n bound, not an anytime one -- which is all a fixed-n check needs).
  Averaging removes most of the dependence of the verdict on the order of the examples.
* Each capital is monotone in m, so the rejected sets are intervals and the bounds are found by
  a bracketing root finder (on the side that keeps them valid).

The relative drop ``mean d / |mean b|`` is handled as a linear test: with the base scores' sign
fixed by the range (``lo >= 0`` or ``hi <= 0``), "relative drop <= r" is "mean(d - r s b) <= 0"
(``s`` the sign), again a mean of bounded values; the verdict is that test at the margin and the
reported bound its inversion in r by bisection.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import sequential as _seq

#: capitals averaged over this many seeded orders of the examples ...
ORDERS = 8
#: ... but at most this many (order x example) factors in all (one order from 250,000 examples)
_MAX_FACTORS = 2_000_000

#: bisection steps for the relative bound (2^-50 of its bracket)
_REL_STEPS = 50


def check_score_range(score_range: Any) -> tuple[float, float] | None:
    """A declared ``(low, high)`` range of per-example scores, validated (None stays None)."""
    if score_range is None:
        return None
    if isinstance(score_range, (str, bytes)):
        raise ValueError(f"score_range must be a pair of numbers (low, high), got {score_range!r}")
    try:
        lo, hi = score_range
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"score_range must be a pair of numbers (low, high), got {score_range!r}") from None
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"score_range must be two numbers (low, high), got {score_range!r} (NaN)")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"score_range must be finite (low, high), got {score_range!r}: an infinite range "
            "bounds nothing (leave it out for the asymptotic bootstrap)"
        )
    if not lo < hi:
        raise ValueError(f"score_range must have low < high, got {score_range!r}")
    if not math.isfinite(hi - lo):
        raise ValueError(f"score_range {score_range!r} is too wide: its width overflows (rescale the scores)")
    return lo, hi


def check_within(scores: np.ndarray, lo: float, hi: float, what: str) -> None:
    """One clear error when a score lies outside the declared range (beyond float rounding)."""
    tol = 1e-12 * max(1.0, abs(lo), abs(hi))
    bad = (scores < lo - tol) | (scores > hi + tol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} scores fall outside the declared score_range ({lo:g}, {hi:g}): "
            f"{int(bad.sum())} value(s), first {scores[i]:g} at index {i}"
        )


def orders_at(n: int) -> int:
    """How many seeded orders the capital of n examples averages over."""
    return max(1, min(ORDERS, _MAX_FACTORS // max(n, 1)))


def _unit_aim(aim: float, bound: float) -> float:
    return min(max((aim + bound) / (2.0 * bound), 1e-9), 1.0 - 1e-9)


class _Capital:
    """The averaged betting capital of one sequence ``y`` in ``[-bound, bound]``, bets aimed at ``aim``."""

    def __init__(self, y: np.ndarray, bound: float, aim: float, alpha: float, seed: int) -> None:
        x = _seq._to_unit(y, bound)
        n = x.size
        orders = orders_at(n)
        rng = np.random.default_rng(seed)
        self.x = np.stack([x[rng.permutation(n)] for _ in range(orders)])
        self.bound = bound
        self.threshold = math.log(1.0 / alpha)
        m0 = _unit_aim(aim, bound)
        self.up, self.down, self.plug = _seq._bets(self.x, m0, alpha)

    def excess(self, m: float, upward: bool) -> float:
        """log(average capital at the unit-scale mean m) - log(1/alpha): K+ (upward) or K-."""
        lam = self.up if upward else self.down
        with np.errstate(divide="ignore", invalid="ignore"):
            aim = np.sum(_seq._log_factors(self.x, np.float64(m), lam, upward), axis=-1)
            flat = np.sum(_seq._log_factors(self.x, np.float64(m), self.plug, upward), axis=-1)
        mixed = _seq._mix(aim, flat)
        top = float(np.max(mixed))
        if not math.isfinite(top):
            return top - self.threshold
        avg = top + math.log(float(np.mean(np.exp(mixed - top))))
        return avg - self.threshold

    def lower(self) -> float:
        """sup {m : K+(m) >= 1/alpha} on the drop scale (never above the exact value)."""
        f0 = self.excess(0.0, True)
        if f0 < 0.0:
            return -self.bound

        def f(m: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.array([self.excess(float(m[0]), True)])

        lo, _ = _seq._bracketed_root(f, np.zeros(1), np.ones(1), np.array([f0]), np.array([self.excess(1.0, True)]))
        return float(lo[0]) * 2.0 * self.bound - self.bound

    def upper(self) -> float:
        """inf {m : K-(m) >= 1/alpha} on the drop scale (never below the exact value)."""
        h0 = self.excess(1.0, False)
        if h0 < 0.0:
            return self.bound

        def f(u: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return np.array([self.excess(1.0 - float(u[0]), False)])

        u_lo, _ = _seq._bracketed_root(f, np.zeros(1), np.ones(1), np.array([h0]), np.array([self.excess(0.0, False)]))
        return (1.0 - float(u_lo[0])) * 2.0 * self.bound - self.bound


def mean_bounds(
    d: np.ndarray, *, bound: float, margin: float, alpha: float, fail_alpha: float, seed: int = 0
) -> tuple[float, float]:
    """(lower bound at ``fail_alpha``, upper bound at ``alpha``) of the mean of ``d``, each one-sided,
    for values in ``[-bound, bound]``; valid at every n. The bets aim at ``margin``."""
    d = np.asarray(d, dtype=float)
    up = _Capital(d, bound, margin, alpha, seed)
    down = up if fail_alpha == alpha else _Capital(d, bound, margin, fail_alpha, seed)
    return down.lower(), up.upper()


def _corner_bound(lo: float, hi: float, sign: float, coef: float) -> float:
    """max |sign (b - t) - coef b| over b, t in [lo, hi] (a linear function: its corners)."""
    return max(abs(sign * (b - t) - coef * b) for b in (lo, hi) for t in (lo, hi))


def relative_bounds(
    b: np.ndarray,
    t: np.ndarray,
    *,
    lo: float,
    hi: float,
    hib: bool,
    pass_at: float,
    fail_at: float,
    alpha: float,
    fail_alpha: float,
    seed: int = 0,
) -> tuple[float, float, bool, bool]:
    """Bounds of the relative drop ``mean d / |mean b|`` and the verdicts of the tests at the margin.

    Returns ``(low, high, passed, failed)``. ``passed``: the test of "mean(d - r s b) >= 0" at
    ``alpha`` rejects at ``r = pass_at`` (the relative drop is below it); ``failed``: "<= 0"
    rejected at ``fail_alpha`` at ``r = fail_at`` (the drop is above it). ``low`` / ``high``
    invert the same tests in r by bisection (the reported interval), kept on the side of
    ``pass_at`` / ``fail_at`` that the verdicts say."""
    if not (lo >= 0.0 or hi <= 0.0):
        raise ValueError(
            f"relative=True needs a score_range on one side of 0 (it fixes the sign of the "
            f"base value), got ({lo:g}, {hi:g}); use an absolute max_drop"
        )
    sign = 1.0 if hib else -1.0
    s = 1.0 if lo >= 0.0 else -1.0
    d = sign * (b - t)
    sb = s * b

    def rejects(r: float, upward: bool, a: float) -> bool:
        """upward: "relative drop <= r" rejected at level a; else "relative drop >= r" rejected."""
        bound = _corner_bound(lo, hi, sign, r * s)
        if not (bound > 0.0 and math.isfinite(bound)):
            return False
        y = np.clip(d - r * sb, -bound, bound)
        # in the unit scale of y in [-bound, bound], a mean of 0 is 1/2
        return _Capital(y, bound, 0.0, a, seed).excess(0.5, upward) > 0.0

    passed = rejects(pass_at, False, alpha)
    failed = rejects(fail_at, True, fail_alpha)
    est = float(d.mean() / abs(b.mean()))

    def invert(upward: bool, a: float) -> float:
        """The r where the test starts to reject, searched away from the estimate (+-inf if never)."""
        direction = -1.0 if upward else 1.0
        inside, step = est, max(1.0, abs(est))
        outside = None
        for _ in range(60):
            cand = est + direction * step
            if rejects(cand, upward, a):
                outside = cand
                break
            inside, step = cand, step * 2.0
        if outside is None:
            return -math.inf if upward else math.inf
        for _ in range(_REL_STEPS):
            mid = 0.5 * (inside + outside)
            if rejects(mid, upward, a):
                outside = mid
            else:
                inside = mid
        return outside

    high = invert(False, alpha)
    low = invert(True, fail_alpha)
    # the verdicts are the tests themselves; keep the reported bounds on their side
    high = min(high, pass_at) if passed else max(high, pass_at)
    low = max(low, fail_at) if failed else min(low, fail_at)
    return min(low, est), max(high, est), passed, failed


def settles(
    y: np.ndarray, *, bound: float, margin: float, alpha: float, at: float, upward: bool, seed: int = 0
) -> bool:
    """Whether :func:`mean_bounds` on ``y`` (bets aimed at ``margin``) puts its upper bound below
    ``at`` (``upward`` False: the test of "mean >= at" at ``alpha`` rejects) or its lower bound
    above it (``upward`` True), with the sample mean on the same side: the decision's own test,
    evaluated once at ``at`` (the bound is its inversion)."""
    mean = float(np.mean(y))
    if not (mean > at if upward else mean < at):
        return False
    cap = _Capital(np.clip(y, -bound, bound), bound, margin, alpha, seed)
    return cap.excess(_unit_aim(at, bound), upward) > 0.0
