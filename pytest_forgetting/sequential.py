"""Sequential (early-stopping) decisions on paired scores: stop as soon as the verdict is settled.

Pure numpy, no I/O, no torch. This is the statistics behind ``--forgetting-early-stop``.

The procedure
-------------
Examples are evaluated in a seeded random order. For the per-example drop
``d_i = base_i - tuned_i`` (``tuned_i - base_i`` for lower-is-better scores) the module keeps an
*anytime-valid confidence sequence*: bounds ``(lower_n, upper_n)`` of the mean drop that hold
simultaneously for every n with probability at least ``1 - 2 * alpha`` (each one-sided bound
misses with probability at most ``alpha``, uniformly over time). So the data may be looked at
after every example, or every batch, and the evaluation stopped whenever the verdict is settled,
without inflating the error rate:

- PASS as soon as ``upper_n < margin`` (non-inferiority proven),
- FAIL as soon as ``lower_n > margin`` (a regression proven),
- INCONCLUSIVE if the examples run out first.

This mirrors the fixed-n rule of :mod:`pytest_forgetting.stats` (the two-sided ``1 - 2*alpha``
interval whose ends are one-sided bounds at ``alpha``), with a time-uniform interval in place of
Tango's.

The bounds are the *predictable plug-in empirical-Bernstein* confidence sequence of
Waudby-Smith and Ramdas ("Estimating means of bounded random variables by betting", JRSS-B
2023, Theorem 2), one-sided at ``alpha`` on each side, rescaled from [0, 1] to the range of the
drop, and intersected over time (the running maximum of the lower bounds and minimum of the upper
bounds, which keeps the guarantee). It needs bounded scores: 0/1 correctness (drops in
{-1, 0, 1}) or any per-example score in a known ``score_range``. It adapts to the variance of the
drops: when base and tuned mostly agree (few flips), the interval shrinks almost like 1/n.

Why it is valid with a shuffled, finite eval set: the eval set is a sample of the task's
population, the same estimand as the fixed-n test, and a seeded shuffle of an i.i.d. sample is
still an i.i.d. sequence.

The price of looking early: at the full size of the set the interval is wider than the fixed-n
one, so a borderline case that the fixed-n test would settle may stay INCONCLUSIVE. A caller that
wants a fixed-n fallback at the end must split alpha (e.g. ``alpha / 2`` here and ``alpha / 2``
for the final :func:`pytest_forgetting.stats.compare_scores`), never reuse the full alpha twice.

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
  made; with ``looks=None`` thinned to the first look, powers of two and the last look).
- Calling it again with more tuned scores gives the same decisions at the earlier looks (the
  bounds at n depend only on the first n pairs), so a caller can evaluate chunk by chunk and
  call it after each chunk.
- Absolute drops only (a relative drop divides by the base value, which is not bounded per
  example); per-class and negative-flip budgets and aggregate metrics (macro-F1, perplexity)
  need the whole set and are out of scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: cap on the bet size of the plug-in confidence sequence (the paper's c; any value in (0, 1) is valid)
MAX_BET = 0.5


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


def confidence_sequence(drops: np.ndarray, *, alpha: float, bound: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Time-uniform bounds of the mean of ``drops`` (values in [-bound, bound]) after each prefix.

    ``drops`` has shape ``(..., n)`` (leading axes are independent sequences, e.g. simulations).
    Returns ``(lower, upper)`` of the same shape: entry ``[..., k]`` bounds the mean after the first
    ``k + 1`` values; each one-sided bound fails at any time with probability at most ``alpha``.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    d = np.asarray(drops, dtype=np.float64)
    if d.shape[-1] == 0:
        return np.empty(d.shape), np.empty(d.shape)
    if not np.all(np.isfinite(d)) or np.any(np.abs(d) > bound * (1 + 1e-12)):
        raise ValueError(f"drops must be finite and within [-{bound:g}, {bound:g}]")
    x = np.clip((d + bound) / (2.0 * bound), 0.0, 1.0)  # to [0, 1]
    n = x.shape[-1]
    t = np.arange(1, n + 1, dtype=np.float64)
    lead = x.shape[:-1] + (1,)
    mu = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)  # regularised running mean after t values
    mu_prev = np.concatenate([np.full(lead, 0.5), mu[..., :-1]], axis=-1)
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=-1)) / (t + 1)
    var_prev = np.concatenate([np.full(lead, 0.25), var[..., :-1]], axis=-1)
    log_term = math.log(1.0 / alpha)
    # predictable bets: depend only on the values before t
    lam = np.minimum(np.sqrt(2.0 * log_term / (var_prev * t * np.log1p(t))), MAX_BET)
    psi = (-np.log1p(-lam) - lam) / 4.0
    v = 4.0 * (x - mu_prev) ** 2
    lam_sum = np.cumsum(lam, axis=-1)
    centre = np.cumsum(lam * x, axis=-1) / lam_sum
    width = (log_term + np.cumsum(v * psi, axis=-1)) / lam_sum
    lower = np.maximum.accumulate(np.clip(centre - width, 0.0, 1.0), axis=-1)
    upper = np.minimum.accumulate(np.clip(centre + width, 0.0, 1.0), axis=-1)
    return lower * 2.0 * bound - bound, upper * 2.0 * bound - bound


def first_settled(lower: np.ndarray, upper: np.ndarray, margin: float, looks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised stopping rule: (index into ``looks`` of the first settled look or -1, verdict code).

    ``lower`` / ``upper`` come from :func:`confidence_sequence` (shape ``(..., n)``); ``looks`` are
    sample sizes (1-based). Verdict codes: 1 pass, -1 fail, 0 not settled.
    """
    lo = lower[..., looks - 1]
    hi = upper[..., looks - 1]
    passed, failed = hi < margin, lo > margin
    settled = passed | failed
    any_settled = settled.any(axis=-1)
    first = np.where(any_settled, settled.argmax(axis=-1), -1)
    take = np.maximum(first, 0)[..., None]
    code = np.where(np.take_along_axis(passed, take, -1)[..., 0], 1, np.where(np.take_along_axis(failed, take, -1)[..., 0], -1, 0))
    return first, np.where(any_settled, code, 0)


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
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.ndim != 1 or t.ndim != 1:
        raise ValueError("base and tuned must be one-dimensional")
    n_total = len(b)
    if len(t) > n_total:
        raise ValueError(f"tuned has {len(t)} scores but base only {n_total}")
    lo_s, hi_s = float(score_range[0]), float(score_range[1])
    if not hi_s > lo_s:
        raise ValueError(f"score_range must be (low, high) with low < high, got {score_range}")
    bound = hi_s - lo_s
    if not -bound < max_drop < bound:
        raise ValueError(f"max_drop={max_drop:g} must lie strictly inside (-{bound:g}, {bound:g}) for scores in {score_range}")
    if min_n < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")
    n_eval = len(t)
    b_eval = b[:n_eval]
    for name, arr in (("base", b_eval), ("tuned", t)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} scores contain NaN/Inf")
        if arr.size and (arr.min() < lo_s - 1e-12 or arr.max() > hi_s + 1e-12):
            raise ValueError(f"{name} scores fall outside score_range {score_range}")
    drops = (b_eval - t) if higher_is_better else (t - b_eval)
    lower, upper = confidence_sequence(drops, alpha=alpha, bound=bound)
    thin = looks is None
    if looks is None:
        made = np.arange(min(min_n, n_total), n_eval + 1) if n_eval >= min(min_n, n_total) else np.array([], dtype=np.int64)
    else:
        all_looks = np.asarray(sorted(set(int(k) for k in looks)), dtype=np.int64)
        if all_looks.size and (all_looks[0] < 1 or all_looks[-1] > n_total):
            raise ValueError(f"looks must lie in [1, {n_total}]")
        made = all_looks[(all_looks >= min(min_n, n_total)) & (all_looks <= n_eval)]
    if n_eval == n_total and n_total and (made.size == 0 or made[-1] != n_total):
        made = np.append(made, n_total)  # the set is exhausted: the last example is always a look
    made = made.astype(np.int64)
    verdict, settled, n_used = "inconclusive", False, n_eval
    if made.size:
        first, code = first_settled(lower, upper, max_drop, made)
        if int(first) >= 0:
            n_used = int(made[int(first)])
            settled = True
            verdict = "pass" if int(code) == 1 else "fail"
            made = made[: int(first) + 1]
    trace = made
    if thin and made.size:
        powers = made[(made & (made - 1)) == 0]
        trace = np.unique(np.concatenate([made[:1], powers, made[-1:]]))
    look_list = tuple(Look(int(k), float(lower[k - 1]), float(upper[k - 1])) for k in trace)
    if n_used == 0:
        ci_low, ci_high, mean_b, mean_t, drop = -bound, bound, float("nan"), float("nan"), float("nan")
    else:
        ci_low, ci_high = float(lower[n_used - 1]), float(upper[n_used - 1])
        mean_b, mean_t = float(b_eval[:n_used].mean()), float(t[:n_used].mean())
        drop = float(drops[:n_used].mean())
    return SequentialResult(
        verdict=verdict, settled=settled, n_used=n_used, n_total=n_total,
        fraction_used=n_used / n_total if n_total else 0.0, ci_low=ci_low, ci_high=ci_high, drop=drop,
        base=mean_b, tuned=mean_t, margin=float(max_drop), alpha=float(alpha), looks=look_list,
    )  # fmt: skip


def chunk_looks(n_total: int, chunk: int) -> list[int]:
    """Looks at the end of every evaluation chunk of ``chunk`` examples (the last one included)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return sorted(set(range(chunk, n_total + 1, chunk)) | ({n_total} if n_total else set()))
