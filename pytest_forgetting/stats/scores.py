""":func:`compare_scores`: paired per-example scores (0/1 flips, a declared score range, or the
studentised bootstrap of the mean difference / relative drop) and its helpers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import bounded as _bounded
from .. import tail_rule as _tail
from .bootstrap import (
    _count_chunks,
    _distinct_rows,
    _group_sizes,
    _SmoothMean,
    _studentized_comparison,
    _too_many_groups,
)
from .no_change import _no_change
from .paired import _CC_FAIL, _CC_RATIO_PASS, _paired_bounds, _ratio_bound, min_n_to_pass
from .refusals import _influence_refusal, _unbounded_refusal
from .settle import _betting_settle, _normal_settle, _tango_settle
from .special import _cp_upper, _z
from .validation import _as_pair, _check_common, _is_binary
from .verdict import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Comparison,
    _Common,
    _CommonRates,
    _decide,
    _degenerate,
    _drop_of,
    _result,
    _Settle,
    _tie_scale,
    _tol,
)


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
    common = _Common(n=n, base=base_value, tuned=tuned_value, margin=m, relative=rel, alpha=a, fail_alpha=af, hib=hib)

    binary = _is_binary(b_arr) and _is_binary(t_arr)
    with _tie_scale(_data_scale(b_arr, t_arr, declared, binary, rel, base_value)):
        return _decide_scores(b_arr, t_arr, declared, binary, common, seed=seed, n_boot=n_boot, n_needed=n_needed)


def _decide_scores(
    b_arr: np.ndarray,
    t_arr: np.ndarray,
    declared: tuple[float, float] | None,
    binary: bool,
    common: _Common,
    *,
    seed: int,
    n_boot: int,
    n_needed: bool,
) -> Comparison:
    """The body of :func:`compare_scores` once the inputs are checked (under their tie scale)."""
    n, m, a, af = common["n"], common["margin"], common["alpha"], common["fail_alpha"]
    base_value, tuned_value, hib, rel = common["base"], common["tuned"], common["hib"], common["relative"]
    nfr = pfr = None
    if declared is not None:
        return _range_comparison(b_arr, t_arr, declared, seed=seed, n_needed=n_needed, **common)
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
            settle = _tango_settle(n_neg, n_pos, n, m, a, af, seed) if verdict == INCONCLUSIVE and n_needed else None
            return _result(
                verdict=verdict,
                drop=drop,
                low=low,
                high=high,
                method="tango",
                nfr=nfr,
                pfr=pfr,
                settle=settle,
                **common,
            )
        return _ratio_comparison(b_arr, t_arr, nfr=nfr, pfr=pfr, **common)

    diff = b_arr - t_arr if hib else t_arr - b_arr
    drop = float(_drop_of(base_value, tuned_value, rel, hib))
    if np.ptp(diff) == 0.0 and diff[0] == 0.0 and np.ptp(b_arr) == 0.0:
        # one constant score for both models: no example shows a scale for a change, at any n
        return _result(
            verdict=INCONCLUSIVE,
            drop=0.0,
            low=-math.inf,
            high=math.inf,
            method="no-change",
            settle=_Settle(
                why=(
                    "more examples of one constant score cannot settle it; declare "
                    "score_range=(low, high) and the exact no-change rule decides with the range's width"
                )
            ),
            note=(
                f"every score of both models is {b_arr[0]:g}, so the sample shows no scale for a "
                "change and nothing bounds the drop"
            ),
            nfr=nfr,
            pfr=pfr,
            **common,
        )
    # no declared range: nothing bounds a change the sample does not show (see _MIN_UNBOUNDED_N)
    refusal = _unbounded_refusal(n, drop, _CommonRates(nfr=nfr, pfr=pfr, **common))
    if refusal is not None:
        return refusal
    if np.ptp(diff) == 0.0:
        if diff[0] == 0.0:
            spread = float(np.ptp(np.concatenate([b_arr, t_arr])))
            scale = spread / (abs(base_value) if rel else 1.0)
            return _no_change(bound=lambda f: scale * f, exact=False, **common)
        return _degenerate(
            drop=drop,
            method="bootstrap-t",
            why=(
                f"every example's difference is the same ({diff[0]:g}), so the bootstrap has no "
                "spread and no bound is valid"
            ),
            **common,
        )
    # a change carried by a few examples, or with an infinite variance: no resampling interval is valid
    refusal = _influence_refusal(
        _tail.mean_influence(b_arr, diff, rel),
        drop,
        _CommonRates(nfr=nfr, pfr=pfr, **common),
        what="the mean score",
        fix="declare score_range=(low, high) to decide",
    )
    if refusal is not None:
        return refusal
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
    return _studentized_comparison(drop=drop0, se=se0, replicates=replicates, smooth=smooth, nfr=nfr, pfr=pfr, **common)


def _data_scale(
    b: np.ndarray, t: np.ndarray, declared: tuple[float, float] | None, binary: bool, rel: bool, base_value: float
) -> float:
    """The magnitude of the numbers the drop is computed from, for the tie tolerance: 1 for 0/1
    scores, else the larger mean absolute score (with a declared range, at least its width, the
    scale of the betting bounds' arithmetic), divided by |mean base| for a relative drop."""
    if binary and declared is None:
        return 1.0
    scale = max(float(np.mean(np.abs(b))), float(np.mean(np.abs(t))))
    if declared is not None:
        scale = max(scale, declared[1] - declared[0])
    if rel:
        scale /= abs(base_value)
    return scale if math.isfinite(scale) else 1.0


def _moment_replicates(
    b: np.ndarray, t: np.ndarray, diff: np.ndarray, rel: bool, hib: bool, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
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


def _moment_plan(
    b: np.ndarray, t: np.ndarray, diff: np.ndarray, rel: bool, hib: bool, n_boot: int, seed: int
) -> tuple[Callable[[], tuple[np.ndarray, np.ndarray]], Callable[[], _SmoothMean] | None]:
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


def _moment_draws(
    cols: np.ndarray,
    sizes: np.ndarray | None,
    n: int,
    n_boot: int,
    seed: int,
    rel: bool,
    hib: bool,
    cb: float,
    cd: float,
) -> tuple[np.ndarray, np.ndarray]:
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


def _ratio_comparison(
    xb: np.ndarray,
    xt: np.ndarray,
    *,
    n: int,
    base: float,
    tuned: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
    nfr: float | None,
    pfr: float | None,
) -> Comparison:
    """Relative drop of a 0/1 metric from the paired ratio score interval of theta = tuned / base."""
    yb, yt = xb == 1.0, xt == 1.0
    cells = [
        float(np.count_nonzero(yb & yt)),
        float(np.count_nonzero(yb & ~yt)),
        float(np.count_nonzero(~yb & yt)),
        float(np.count_nonzero(~yb & ~yt)),
    ]
    nb = cells[0] + cells[1]
    zp, zf = _z(alpha), _z(fail_alpha)
    flips = cells[1] + cells[2]
    if hib:  # drop = 1 - theta: PASS needs theta's lower end, FAIL its upper end
        high = 1.0 - _ratio_bound(cells, zp, upper=False, cc=_CC_RATIO_PASS)
        low = 1.0 - _ratio_bound(cells, zf, upper=True, cc=_CC_FAIL)
        if flips == 0:  # exact, conditional on which examples the base got right
            high = max(high, _cp_upper(0.0, nb, alpha))
    else:  # drop = theta - 1
        high = _ratio_bound(cells, zp, upper=True, cc=_CC_RATIO_PASS) - 1.0
        low = _ratio_bound(cells, zf, upper=False, cc=_CC_FAIL) - 1.0
        if flips == 0 and n > nb:
            high = max(high, _cp_upper(0.0, n - nb, alpha) * (n - nb) / nb)
    drop = float(_drop_of(base, tuned, True, hib))
    low, high = min(low, drop), max(high, drop)
    verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE:
        if flips == 0 and hib and margin > 0:  # nothing flips at these rates: the exact bound decides
            need = min_n_to_pass(margin, alpha)  # None: a margin within the tie tolerance of 0 never passes
            settle = _Settle(why="tie") if need is None else _Settle(n=max(n + 1, math.ceil(need * n / nb)), prob=1.0)
        else:
            settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha)
    return _result(
        verdict=verdict,
        n=n,
        base=base,
        tuned=tuned,
        drop=drop,
        low=low,
        high=high,
        margin=margin,
        relative=relative,
        alpha=alpha,
        fail_alpha=fail_alpha,
        hib=hib,
        method="ratio-score",
        nfr=nfr,
        pfr=pfr,
        settle=settle,
    )


def _range_comparison(
    b: np.ndarray,
    t: np.ndarray,
    declared: tuple[float, float],
    *,
    seed: int,
    n_needed: bool = True,
    n: int,
    base: float,
    tuned: float,
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
) -> Comparison:
    """Per-example scores in a declared range: betting bounds of the mean difference (absolute) or
    the linear test of the relative drop (:mod:`pytest_forgetting.bounded`), valid at every n."""
    lo, hi = declared
    width = hi - lo
    common = _Common(
        n=n, base=base, tuned=tuned, margin=margin, relative=relative, alpha=alpha, fail_alpha=fail_alpha, hib=hib
    )
    drop = float(_drop_of(base, tuned, relative, hib))
    if relative:
        tol = _tol(margin)
        low, high, passed, failed = _bounded.relative_bounds(
            b,
            t,
            lo=lo,
            hi=hi,
            hib=hib,
            pass_at=margin - tol,
            fail_at=margin + tol,
            alpha=alpha,
            fail_alpha=fail_alpha,
            seed=seed,
        )
        verdict = PASS if passed else FAIL if failed else INCONCLUSIVE
    else:
        d = np.clip(b - t if hib else t - b, -width, width)
        if not d.any():
            # nothing changed: a changed example moves the mean by at most the width (exact rule)
            return _no_change(bound=lambda f: width * f, exact=True, **common)
        low, high = _bounded.mean_bounds(d, bound=width, margin=margin, alpha=alpha, fail_alpha=fail_alpha, seed=seed)
        low, high = min(low, drop), max(high, drop)
        verdict = _decide(low, high, margin)
    settle = None
    if verdict == INCONCLUSIVE and n_needed:
        settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha)
        if not relative:
            settle = _betting_settle(
                d, bound=width, margin=margin, alpha=alpha, fail_alpha=fail_alpha, seed=seed, guess=settle
            )
    return _result(verdict=verdict, drop=drop, low=low, high=high, method="betting", settle=settle, **common)
