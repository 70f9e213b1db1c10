"""Sequential (early-stopping) decisions on paired scores: stop as soon as the verdict is settled.

Pure numpy and the standard library, no I/O, no torch. This is the statistics behind
``--forgetting-early-stop``.

The procedure
-------------
Examples are evaluated in a seeded random order. For the per-example drop
``d_i = base_i - tuned_i`` (``tuned_i - base_i`` for lower-is-better scores), bounded in
``[-B, B]`` with ``B`` the width of ``score_range``, the module runs two *betting* tests of the
margin and reports the confidence sequence they belong to:

- PASS as soon as the capital that bets on "the mean drop is below the margin" reaches
  ``1 / alpha`` (then the upper bound of the confidence sequence is below the margin),
- FAIL as soon as the capital that bets on "the mean drop is above the margin" reaches
  ``1 / alpha`` (the lower bound is above the margin: a regression proven),
- INCONCLUSIVE if the examples run out first.

Each one-sided bound misses the true mean with probability at most ``alpha`` *uniformly over
time* (Ville's inequality for a nonnegative supermartingale), so the data may be looked at after
every example, or every chunk, and evaluation stopped whenever the verdict is settled, without
inflating the error rate. At a true drop equal to the margin each wrong verdict has probability
at most ``alpha``; this mirrors the fixed-n rule of :mod:`pytest_forgetting.stats`.

The betting confidence sequence
-------------------------------
Waudby-Smith and Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 85
(2023), section 4 (capital processes, hedging) and section 5 (predictable bets). The drop is
mapped to ``x_i = (d_i + B) / (2B)`` in [0, 1]; for a candidate mean ``m`` of ``x``

    K+_t(m) = prod_{i<=t} (1 + l+_i(m) (x_i - m)),   K-_t(m) = prod_{i<=t} (1 - l-_i(m) (x_i - m)),

with bets ``l+_i(m) = min(l_i, c / m)`` and ``l-_i(m) = min(l_i, c / (1 - m))``, ``c = 1/2``,
where ``l_i`` is *predictable* (a function of ``x_1 .. x_{i-1}`` only). If the mean of ``x`` is at
most ``m``, ``K+(m)`` is a nonnegative supermartingale with ``K+_0 = 1`` and exceeds ``1/alpha``
at any time with probability at most ``alpha``; symmetrically for ``K-`` at a mean of at least
``m``. The lower bound at time t is ``sup {m : K+_t(m) >= 1/alpha}`` and the upper bound
``inf {m : K-_t(m) >= 1/alpha}``; both capitals are monotone in ``m`` (each factor is, because
the bets depend on ``m`` only through the truncation), so these sets are intervals and the bounds
are found by a bracketing root finder (Illinois regula falsi), always on the valid side. The
reported bounds are intersected over the looks (running maximum of the lower, minimum of the
upper bound), which keeps the guarantee. A verdict needs the capital at the margin *strictly*
above ``1/alpha``, so a drop that sits on the margin is never a proven result.

Each capital is a mixture (a weighted average, still a supermartingale) of two bet sequences:

- weight 0.9: the paper's *aGRAPA* bet aimed at the margin ``m0``:
  ``l_i = max(g, 0) / (s2 + g^2)`` with ``g = mu_{i-1} - m0`` for ``K+`` (``m0 - mu_{i-1}`` for
  ``K-``), where ``mu`` and ``s2`` are the regularised running mean and variance of ``x``
  (``mu_0 = 1/2``, ``s2_0 = 1/4``). It approximates the growth-optimal (Kelly) bet against the
  margin, so the test at the margin, which is what decides the verdict, gains evidence about as
  fast as possible whatever the flip rate.
- weight 0.1: the paper's *predictable plug-in* bet ``l_i = sqrt(2 log(1/(0.1 alpha)) /
  (s2_{i-1} i log(1 + i)))``, which does not depend on the margin; it keeps the far side of the
  reported interval informative (the aGRAPA bet on the side the data argue against is 0).

The bets depend on the margin, a constant fixed before any data are seen, so the sequence is
valid for every ``m`` at once; it is simply tightest around the margin. It needs bounded scores:
0/1 correctness (drops in {-1, 0, 1}) or any per-example score in a known ``score_range``.

Power, against the previous empirical-Bernstein sequence of the same paper (Theorem 2), by
seeded simulation (``tests/test_sequential.py``; looks after every example from the 20th; margin
0.02, true drop 0 unless said):

==============================================  ==================  ==================
case                                            betting (this)      empirical Bernstein
==============================================  ==================  ==================
500 examples, 1 % flipped each way: PASS        65 %                14 %
500 examples, 2.5 % flipped each way: PASS      32 %                10 %
10,000 examples, 10 % each way: mean share used 43 % (PASS 93 %)    61 % (PASS 72 %)
2,000 examples, true drop 0.05: FAIL            95 %, 41 % used     88 %, 55 % used
two identical models: PASS after                307 examples        600 examples
==============================================  ==================  ==================

(The fixed-n Tango test settles the first case 87 % of the time and passes identical models
from about 149 examples: that is the price of being allowed to look at every example.)

Why it is valid with a shuffled, finite eval set: the eval set is a sample of the task's
population, the same estimand as the fixed-n test, and a seeded shuffle of an i.i.d. sample is
still an i.i.d. sequence.

The price of looking early: at the full size of the set the bounds are wider than the fixed-n
ones, so a borderline case that the fixed-n test would settle may stay INCONCLUSIVE. A caller
that wants a fixed-n fallback at the end must split alpha (e.g. ``alpha / 2`` here and
``alpha / 2`` for the final :func:`pytest_forgetting.stats.compare_scores`), never reuse the
full alpha twice.

Contract of :func:`sequential_decide`
-------------------------------------
``sequential_decide(base, tuned, *, max_drop, alpha, higher_is_better=True, looks=None,
min_n=20, score_range=(0, 1)) -> SequentialResult``

- ``base`` and ``tuned`` are per-example scores *in evaluation order* (the caller shuffles with
  its seed; this function never reorders). ``tuned`` may be shorter than ``base``: only its first
  ``len(tuned)`` examples have been evaluated so far (the cached base evaluation is complete).
  ``n_total`` of the result is ``len(base)``.
- ``looks``: the increasing sample sizes at which stopping is allowed (e.g. the ends of the
  evaluation chunks); ``None`` means after every example (from ``min_n`` on). Looks beyond the
  evaluated length are not made yet.
- The result says ``verdict`` (``"pass" | "fail" | "inconclusive"``), ``settled`` (pass or fail
  reached), ``done`` (settled, or all ``n_total`` examples used: stop evaluating), ``n_used`` (the
  look at which it stopped, else the evaluated length), ``fraction_used = n_used / n_total``,
  ``ci_low`` / ``ci_high`` (bounds of the mean drop at ``n_used``), ``drop``, ``base``, ``tuned``
  (means over the first ``n_used`` examples) and ``looks`` (``(n, lower, upper)`` at each look
  made; with ``looks=None`` thinned to the first look, powers of two and the last look). The
  bounds are intersected over the looks listed.
- Calling it again with more tuned scores gives the same decisions at the earlier looks (the
  capital at n depends only on the first n pairs), so a caller can evaluate chunk by chunk and
  call it after each chunk.
- Absolute drops only (a relative drop divides by the base value, which is not bounded per
  example); per-class and negative-flip budgets and aggregate metrics (macro-F1, perplexity)
  need the whole set and are out of scope.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

#: cap on the bet as a fraction of the largest safe bet (the paper's c; any value in (0, 1) is valid)
MAX_BET = 0.5

#: weight of the margin-aimed aGRAPA bets in each capital (the rest goes to the plug-in bets)
MARGIN_WEIGHT = 0.9

#: root finding for the reported bounds: at most this many steps, to this width of [0, 1]
_ROOT_STEPS = 200
_ROOT_TOL = 1e-10


@dataclass(frozen=True)
class Look:
    n: int
    lower: float
    upper: float


@dataclass(frozen=True)
class SequentialResult:
    verdict: str  # "pass" | "fail" | "inconclusive"
    settled: bool
    n_used: int
    n_total: int
    fraction_used: float
    ci_low: float
    ci_high: float
    drop: float
    base: float
    tuned: float
    margin: float
    alpha: float
    looks: tuple[Look, ...]

    @property
    def done(self) -> bool:
        """Stop evaluating: the verdict is settled or every example has been used."""
        return self.settled or self.n_used >= self.n_total


# -- the capital processes -------------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    return a


def _to_unit(drops: np.ndarray | Sequence[float], bound: float) -> np.ndarray:
    """Drops in [-bound, bound] -> values in [0, 1] (the scale the capital processes bet on)."""
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be positive and finite, got {bound}")
    d = np.asarray(drops, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(np.abs(d) > bound * (1 + 1e-12)):
        raise ValueError(f"drops must be finite and within [-{bound:g}, {bound:g}]")
    return np.clip((d + bound) / (2.0 * bound), 0.0, 1.0)


def _margin_to_unit(margin: float, bound: float) -> float:
    m = float(margin)
    if not -bound < m < bound:
        raise ValueError(f"margin {m:g} must lie strictly inside (-{bound:g}, {bound:g})")
    return min(max((m + bound) / (2.0 * bound), 1e-12), 1.0 - 1e-12)


def _bets(x: np.ndarray, m0: float, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictable bets (before truncation) for x of shape (..., n): (aGRAPA for K+, aGRAPA for K-,
    plug-in for both). Entry t uses x[..., :t] only."""
    n = x.shape[-1]
    t = np.arange(1, n + 1, dtype=np.float64)
    lead = x.shape[:-1] + (1,)
    mu = (0.5 + np.cumsum(x, axis=-1)) / (t + 1.0)
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=-1)) / (t + 1.0)
    mu_prev = np.concatenate([np.full(lead, 0.5), mu[..., :-1]], axis=-1)
    var_prev = np.concatenate([np.full(lead, 0.25), var[..., :-1]], axis=-1)
    gap = mu_prev - m0
    up = np.maximum(gap, 0.0) / (var_prev + gap * gap)
    down = np.maximum(-gap, 0.0) / (var_prev + gap * gap)
    log_thr = math.log(1.0 / ((1.0 - MARGIN_WEIGHT) * alpha))
    plug = np.sqrt(2.0 * log_thr / (var_prev * t * np.log1p(t)))
    return up, down, plug


def _mix(log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """log(w exp(a) + (1 - w) exp(b)) without overflow."""
    return np.logaddexp(math.log(MARGIN_WEIGHT) + log_a, math.log1p(-MARGIN_WEIGHT) + log_b)


def _log_factors(x: np.ndarray, m: np.ndarray | float, lam: np.ndarray, upward: bool) -> np.ndarray:
    """log(1 + l(m) (x - m)) for K+ (upward) or log(1 - l(m) (x - m)) for K-, l truncated at c/m or c/(1-m)."""
    out: NDArray[np.float64]
    if upward:
        out = np.log1p(np.minimum(lam, MAX_BET / m) * (x - m))
    else:
        out = np.log1p(np.minimum(lam, MAX_BET / (1.0 - m)) * (m - x))
    return out


def log_capital(
    drops: np.ndarray | Sequence[float], *, margin: float, alpha: float = 0.05, bound: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Log capital of the two one-sided tests of the margin after each prefix: ``(log_fail, log_pass)``.

    ``drops`` has shape ``(..., n)`` (leading axes are independent sequences, e.g. simulations),
    values in ``[-bound, bound]``. ``log_fail[..., k]`` is ``log K+`` at the margin after the first
    ``k + 1`` drops (it exceeds ``log(1/alpha)`` with probability at most ``alpha`` at any time
    when the true mean drop is at most the margin); ``log_pass`` is ``log K-`` (the same when the
    true mean drop is at least the margin).
    """
    a = _check_alpha(alpha)
    x = _to_unit(drops, bound)
    m0 = _margin_to_unit(margin, bound)
    if x.shape[-1] == 0:
        return np.empty(x.shape), np.empty(x.shape)
    up, down, plug = _bets(x, m0, a)
    fail = _mix(np.cumsum(_log_factors(x, m0, up, True), axis=-1), np.cumsum(_log_factors(x, m0, plug, True), axis=-1))
    passed = _mix(
        np.cumsum(_log_factors(x, m0, down, False), axis=-1), np.cumsum(_log_factors(x, m0, plug, False), axis=-1)
    )
    return fail, passed


def settle(
    drops: np.ndarray | Sequence[float],
    *,
    margin: float,
    looks: np.ndarray | Sequence[int],
    alpha: float = 0.05,
    bound: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised stopping rule: (index into ``looks`` of the first settled look or -1, verdict code).

    ``drops`` has shape ``(..., n)``; ``looks`` are sample sizes in ``[1, n]``. Verdict codes: 1
    pass, -1 fail, 0 not settled. A look settles when a capital is *strictly* above ``1/alpha``.
    """
    lf, lp = log_capital(drops, margin=margin, alpha=alpha, bound=bound)
    lk = np.asarray(looks, dtype=np.int64)
    thr = math.log(1.0 / _check_alpha(alpha))
    passed = lp[..., lk - 1] > thr
    failed = lf[..., lk - 1] > thr
    settled = passed | failed
    any_settled = settled.any(axis=-1)
    first = np.where(any_settled, settled.argmax(axis=-1), -1)
    take = np.maximum(first, 0)[..., None]
    code = np.where(
        np.take_along_axis(passed, take, -1)[..., 0], 1, np.where(np.take_along_axis(failed, take, -1)[..., 0], -1, 0)
    )
    return first, np.where(any_settled, code, 0)


def _bracketed_root(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray],
    lo: np.ndarray,
    hi: np.ndarray,
    f_lo: np.ndarray,
    f_hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink brackets [lo, hi] with f(lo) >= 0 > f(hi), f decreasing (vectorised), by the Illinois
    variant of regula falsi (bisection where the secant step leaves the bracket).

    ``f(m, rows)`` evaluates the entries ``rows`` only (the converged ones are left out). Returns
    the final (lo, hi): f(lo) >= 0 > f(hi) still holds for every entry, so the caller can take the
    side that keeps its bound conservative.
    """
    lo, hi, f_lo, f_hi = lo.copy(), hi.copy(), f_lo.copy(), f_hi.copy()
    last = np.zeros(lo.shape, dtype=np.int8)  # +1: lo moved last, -1: hi moved last
    for _ in range(_ROOT_STEPS):
        rows = np.flatnonzero(hi - lo > _ROOT_TOL)
        if rows.size == 0:
            break
        lw, h, fl, fh = lo[rows], hi[rows], f_lo[rows], f_hi[rows]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = lw + (h - lw) * fl / (fl - fh)
        x = np.where(np.isfinite(x) & (x > lw) & (x < h), x, 0.5 * (lw + h))
        fx = f(x, rows)
        up = fx >= 0
        # Illinois: an end that stays put twice running has its value halved (so both ends converge)
        lr = last[rows]
        f_hi[rows] = np.where(up & (lr == 1), 0.5 * fh, fh)
        f_lo[rows] = np.where(~up & (lr == -1), 0.5 * fl, fl)
        lo[rows] = np.where(up, x, lw)
        hi[rows] = np.where(up, h, x)
        f_lo[rows] = np.where(up, fx, f_lo[rows])
        f_hi[rows] = np.where(up, f_hi[rows], fx)
        last[rows] = np.where(up, 1, -1)
    return lo, hi


def confidence_bounds(
    drops: np.ndarray | Sequence[float],
    *,
    margin: float,
    at: Sequence[int] | np.ndarray,
    alpha: float = 0.05,
    bound: float = 1.0,
    intersect: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the mean drop of a single sequence after the first ``k`` drops, for each ``k`` in ``at``.

    ``lower = sup {mu : K+(mu) >= 1/alpha}``, ``upper = inf {mu : K-(mu) >= 1/alpha}`` (mapped back
    to the drop scale), found by a bracketing root finder on the side that keeps each bound valid
    (the returned lower bound is never above the exact one, the upper never below; they are within
    about 1e-12 of it). With ``intersect`` (the default) they are the running intersection over
    ``at`` (sorted increasing).
    """
    a = _check_alpha(alpha)
    x = _to_unit(drops, bound)
    if x.ndim != 1:
        raise ValueError("confidence_bounds takes one sequence of drops")
    m0 = _margin_to_unit(margin, bound)
    ks = np.asarray(at, dtype=np.int64)
    if ks.size == 0:
        return np.empty(0), np.empty(0)
    if ks.min() < 1 or ks.max() > x.size or np.any(np.diff(ks) < 0):
        raise ValueError(f"at must be increasing sample sizes in [1, {x.size}]")
    up, down, plug = _bets(x, m0, a)
    thr = math.log(1.0 / a)

    def excess(m: np.ndarray, upward: bool, rows: np.ndarray | None = None) -> np.ndarray:
        """log K(m) - log(1/alpha) at the looks ``rows`` (all by default); K+ if upward else K-.

        Each look sums its own first k factors, so its value depends on the first k drops only,
        bit for bit, whatever other looks are computed alongside.
        """
        which = np.arange(ks.size) if rows is None else rows
        lam = up if upward else down
        aim, flat = np.empty(which.size), np.empty(which.size)
        with np.errstate(divide="ignore"):
            for j, (r, mj) in enumerate(zip(which.tolist(), m.tolist())):
                k, mm = int(ks[r]), np.float64(mj)
                aim[j] = np.sum(_log_factors(x[:k], mm, lam[:k], upward))
                flat[j] = np.sum(_log_factors(x[:k], mm, plug[:k], upward))
        return _mix(aim, flat) - thr

    zeros, ones = np.zeros(ks.size), np.ones(ks.size)
    # K+ is nonincreasing in m (rejected set [0, L]); K+(1) <= 1 is never rejected.
    f0 = excess(zeros, True)
    lo, _ = _bracketed_root(lambda m, r: excess(m, True, r), zeros, ones, f0, excess(ones, True))
    lows = np.where(f0 >= 0, lo, 0.0)
    # K- is nondecreasing in m (rejected set [U, 1]); K-(0) <= 1 is never rejected. As a function
    # of u = 1 - m it is nonincreasing, so the same routine applies.
    h0 = excess(ones, False)
    u_lo, _ = _bracketed_root(lambda u, r: excess(1.0 - u, False, r), zeros, ones, h0, excess(zeros, False))
    highs = np.where(h0 >= 0, 1.0 - u_lo, 1.0)
    if intersect:
        lows, highs = np.maximum.accumulate(lows), np.minimum.accumulate(highs)
    return lows * 2.0 * bound - bound, highs * 2.0 * bound - bound


# -- the decision --------------------------------------------------------------------------------


def sequential_decide(
    base: Sequence[float] | np.ndarray,
    tuned: Sequence[float] | np.ndarray,
    *,
    max_drop: float,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    looks: Sequence[int] | None = None,
    min_n: int = 20,
    score_range: tuple[float, float] = (0.0, 1.0),
) -> SequentialResult:
    """Decide a non-inferiority check from paired scores in evaluation order, stopping early.

    See the module docstring for the contract. ``max_drop`` is the margin of the absolute drop
    (positive = worse), in the units of the scores.
    """
    a = _check_alpha(alpha)
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.ndim != 1 or t.ndim != 1:
        raise ValueError("base and tuned must be one-dimensional")
    n_total = len(b)
    if n_total == 0:
        raise ValueError("base has no scores: there is nothing to decide on")
    if len(t) > n_total:
        raise ValueError(f"tuned has {len(t)} scores but base only {n_total}")
    lo_s, hi_s = float(score_range[0]), float(score_range[1])
    if not (math.isfinite(lo_s) and math.isfinite(hi_s)) or not hi_s > lo_s:
        raise ValueError(f"score_range must be finite (low, high) with low < high, got {score_range}")
    bound = hi_s - lo_s
    if not math.isfinite(float(max_drop)) or not -bound < max_drop < bound:
        raise ValueError(
            f"max_drop={max_drop:g} must lie strictly inside (-{bound:g}, {bound:g}) for scores in {score_range}"
        )
    if min_n < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")
    n_eval = len(t)
    b_eval = b[:n_eval]
    for name, arr in (("base", b_eval), ("tuned", t)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} scores contain NaN/Inf")
        if arr.size and (arr.min() < lo_s - 1e-12 or arr.max() > hi_s + 1e-12):
            raise ValueError(f"{name} scores fall outside score_range {score_range}")
    drops = np.clip((b_eval - t) if higher_is_better else (t - b_eval), -bound, bound)
    thin = looks is None
    first_look = min(min_n, n_total)
    if looks is None:
        made = np.arange(first_look, n_eval + 1) if n_eval >= first_look else np.array([], dtype=np.int64)
    else:
        all_looks = np.asarray(sorted(set(int(k) for k in looks)), dtype=np.int64)
        if all_looks.size and (all_looks[0] < 1 or all_looks[-1] > n_total):
            raise ValueError(f"looks must lie in [1, {n_total}]")
        made = all_looks[(all_looks >= first_look) & (all_looks <= n_eval)]
    if n_eval == n_total and (made.size == 0 or made[-1] != n_total):
        made = np.append(made, n_total)  # the set is exhausted: the last example is always a look
    made = made.astype(np.int64)
    verdict, settled, n_used = "inconclusive", False, n_eval
    if made.size:
        first, code = settle(drops, margin=max_drop, looks=made, alpha=a, bound=bound)
        if int(first) >= 0:
            n_used = int(made[int(first)])
            settled = True
            verdict = "pass" if int(code) == 1 else "fail"
            made = made[: int(first) + 1]
    trace = made
    if thin and made.size:
        powers = made[(made & (made - 1)) == 0]
        trace = np.unique(np.concatenate([made[:1], powers, made[-1:]]))
    if trace.size:
        lows, highs = confidence_bounds(drops, margin=max_drop, at=trace, alpha=a, bound=bound)
        # The capital at the margin is above 1/alpha at the stopping look, so the margin lies
        # beyond the exact bound; bisection stops within 2**-52 of it and may land on the margin.
        if verdict == "fail":
            lows[-1] = max(lows[-1], math.nextafter(float(max_drop), math.inf))
        elif verdict == "pass":
            highs[-1] = min(highs[-1], math.nextafter(float(max_drop), -math.inf))
    else:
        lows = highs = np.empty(0)
    look_list = tuple(Look(int(k), float(lo), float(hi)) for k, lo, hi in zip(trace, lows, highs))
    if n_used == 0:
        ci_low, ci_high, mean_b, mean_t, drop = -bound, bound, float("nan"), float("nan"), float("nan")
    else:
        if trace.size and trace[-1] == n_used:
            ci_low, ci_high = float(lows[-1]), float(highs[-1])
        else:  # evaluated past the last look: the bounds so far
            lo1, hi1 = confidence_bounds(drops, margin=max_drop, at=[n_used], alpha=a, bound=bound)
            ci_low = max(float(lo1[0]), float(lows[-1]) if lows.size else -bound)
            ci_high = min(float(hi1[0]), float(highs[-1]) if highs.size else bound)
        mean_b, mean_t = float(b_eval[:n_used].mean()), float(t[:n_used].mean())
        drop = float(drops[:n_used].mean())
    return SequentialResult(
        verdict=verdict, settled=settled, n_used=n_used, n_total=n_total,
        fraction_used=n_used / n_total, ci_low=ci_low, ci_high=ci_high, drop=drop,
        base=mean_b, tuned=mean_t, margin=float(max_drop), alpha=a, looks=look_list,
    )  # fmt: skip


def chunk_looks(n_total: int, chunk: int) -> list[int]:
    """Looks at the end of every evaluation chunk of ``chunk`` examples (the last one included)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return sorted(set(range(chunk, n_total + 1, chunk)) | ({n_total} if n_total else set()))
