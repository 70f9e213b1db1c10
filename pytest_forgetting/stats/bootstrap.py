"""Bootstrap machinery: seeded paired resamples (index matrices, or multinomial counts over groups of
identical examples) in memory-bounded chunks, the studentised (bootstrap-t) bounds and the Edgeworth
interval that replaces them at large n (Hall 1992), the studentised comparison built on them, and the
BCa bounds (Efron 1987) with their jackknife."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from .settle import _normal_settle
from .special import _phi, _z
from .verdict import INCONCLUSIVE, Comparison, _CommonRates, _decide, _degenerate, _drop_of, _result

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


def _index_chunks(n: int, n_boot: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
    """Seeded paired resamples as (rows, n) index matrices, in memory-bounded chunks; the chunk
    size depends only on n (and the caller's width), so results depend only on the seed."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // (n * max(1, width)))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _bootstrap_replicates(n: int, n_boot: int, seed: int, batch: Callable[[np.ndarray], Any]) -> Any:
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
    same = all(
        np.array_equal(arr[lo : lo + step], arr[first[codes[lo : lo + step]]])
        for arr in arrays
        for lo in range(0, n, step)
    )
    if not same:
        _, first, codes = np.unique(np.concatenate(arrays, axis=1), axis=0, return_index=True, return_inverse=True)
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
    return bool(first.size * _MULTINOMIAL_RATIO > n)


def _group_sizes(codes: np.ndarray, groups: int, n: int) -> np.ndarray | None:
    """Examples per group when resampling groups by multinomial pays (see _MULTINOMIAL_RATIO)."""
    if groups * _MULTINOMIAL_RATIO > n:
        return None
    return np.bincount(codes, minlength=groups).astype(float)


def _count_chunks(sizes: np.ndarray | None, n: int, n_boot: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
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


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Resample counts per example, (rows, n), from an index matrix."""
    out = np.empty(idx.shape, dtype=float)
    for r in range(idx.shape[0]):
        out[r] = np.bincount(idx[r], minlength=n)
    return out


def _order_bounds(
    low_reps: np.ndarray, high_reps: np.ndarray, alpha_low: float, alpha_high: float
) -> tuple[float, float]:
    """The alpha_low quantile of ``low_reps`` and the (1 - alpha_high) quantile of ``high_reps``
    as order statistics (no interpolation, so infinite replicates stay meaningful)."""
    size = low_reps.size
    k_lo = min(size - 1, max(0, int(math.floor(alpha_low * (size - 1)))))
    k_hi = min(size - 1, max(0, int(math.floor(alpha_high * (size - 1)))))
    lo = float(np.partition(low_reps, k_lo)[k_lo])
    hi = float(np.partition(high_reps, size - 1 - k_hi)[size - 1 - k_hi])
    return lo, hi


def _studentized_bounds(
    drop: float, se: float, reps: np.ndarray, reps_se: np.ndarray, alpha: float, fail_alpha: float
) -> tuple[float, float]:
    """Bootstrap-t bounds: t* = (drop* - drop) / se*; upper = drop - q_alpha(t*) se, lower =
    drop - q_{1 - fail_alpha}(t*) se. A resample with no spread has t* = +-inf (or 0 when its
    drop equals the estimate) and an undefined one counts against both a PASS and a FAIL."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (reps - drop) / reps_se
        t = np.where(reps_se > 0, t, np.where(reps == drop, 0.0, np.sign(reps - drop) * np.inf))
    undefined = np.isnan(t)
    q_low, q_high = _order_bounds(np.where(undefined, -np.inf, t), np.where(undefined, np.inf, t), alpha, fail_alpha)
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
    cov = u.T @ u / n  # S
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
    sa = cov @ a  # S a
    q = float(sa @ hess @ sa)
    tr_hs = float(np.sum(hess * cov))  # tr(H S)
    k12 = tr_hs / (2.0 * sigma) - (m3 + 2.0 * q) / (2.0 * sigma**3)
    k31 = -(2.0 * m3 + 3.0 * q) / sigma**3
    second = ((m3 / sigma**3) ** 2 + abs(m4 / sigma**4 - 3.0)) / n
    return float(value), sigma, k12, k31, second


def _edgeworth_bounds(
    sm: _SmoothMean, drop: float, se: float, alpha: float, fail_alpha: float
) -> tuple[float, float] | None:
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
    if not (
        sigma > 0.0
        and math.isfinite(second)
        and second <= _EDGEWORTH_MAX_SECOND
        and math.isclose(value, drop, rel_tol=1e-7, abs_tol=1e-12 * max(1.0, abs(drop)))
    ):
        return None
    root_n = math.sqrt(n)

    def shift(zq: float) -> float:
        return (k12 + k31 * (zq * zq - 1.0) / 6.0) / root_n

    zp, zf = _z(alpha), _z(fail_alpha)
    s_low, s_high = shift(-zp), shift(zf)  # at the alpha and 1 - fail_alpha quantiles of T
    if max(abs(s_low), abs(s_high)) > _EDGEWORTH_MAX_SHIFT:
        return None
    high = drop - (-zp + s_low) * se
    low = drop - (zf + s_high) * se
    return min(low, drop), max(high, drop)


def _studentized_comparison(
    *,
    n: int,
    base: float,
    tuned: float,
    drop: float,
    se: float,
    replicates: Callable[[], tuple[np.ndarray, np.ndarray]],
    margin: float,
    relative: bool,
    alpha: float,
    fail_alpha: float,
    hib: bool,
    smooth: Callable[[], _SmoothMean] | None = None,
    nfr: float | None = None,
    pfr: float | None = None,
) -> Comparison:
    """Bootstrap-t bounds from ``replicates()`` (drops and SEs of the resamples), or, from
    _ANALYTIC_MIN_N examples when the caller gives the drop's smooth-function form (``smooth``:
    given only where resamples would draw an index per example), the same interval from its
    Edgeworth expansion (method "edgeworth-t", deterministic: no resamples, so no seed)."""
    common = _CommonRates(
        n=n,
        base=base,
        tuned=tuned,
        margin=margin,
        relative=relative,
        alpha=alpha,
        fail_alpha=fail_alpha,
        hib=hib,
        nfr=nfr,
        pfr=pfr,
    )
    if not (se > 0.0 and math.isfinite(se)):
        return _degenerate(
            drop=drop,
            method="bootstrap-t",
            why=("the standard error of the drop is 0, so the bootstrap has no spread and no bound is valid"),
            **common,
        )
    bounds, method = None, "bootstrap-t"
    if smooth is not None and n >= _ANALYTIC_MIN_N:
        bounds, method = _edgeworth_bounds(smooth(), drop, se, alpha, fail_alpha), "edgeworth-t"
    if bounds is None:
        reps, reps_se = replicates()
        bounds, method = _studentized_bounds(drop, se, reps, reps_se, alpha, fail_alpha), "bootstrap-t"
    low, high = bounds
    verdict = _decide(low, high, margin)
    settle = _normal_settle(n, drop, low, high, margin, alpha, fail_alpha) if verdict == INCONCLUSIVE else None
    return _result(verdict=verdict, drop=drop, low=low, high=high, method=method, settle=settle, **common)


def _bca_bounds(
    drop: float, reps: np.ndarray, jack: np.ndarray, alpha: float, fail_alpha: float
) -> tuple[float, float] | None:
    """BCa bounds (Efron 1987); None when the resamples lie entirely on one side of the estimate
    (no bias correction exists, so no bound would be honest)."""
    size = reps.size
    frac = (np.count_nonzero(reps < drop) + 0.5 * np.count_nonzero(reps == drop)) / size
    if not 0.0 < frac < 1.0:
        return None
    z0 = NormalDist().inv_cdf(frac)
    dev = jack.mean() - jack
    ss = float(np.sum(dev * dev))
    acc = float(np.sum(dev**3)) / (6.0 * ss**1.5) if ss > 0 else 0.0

    def level(zq: float) -> float:
        den = 1.0 - acc * (z0 + zq)
        if den <= 0.0:
            return 1.0 if zq > 0 else 0.0
        return _phi(z0 + (z0 + zq) / den)

    a_hi = 1.0 - level(_z(alpha))  # tail share above the upper bound
    a_lo = level(-_z(fail_alpha))  # tail share below the lower bound
    undefined = np.isnan(reps)
    lo, hi = _order_bounds(np.where(undefined, -np.inf, reps), np.where(undefined, np.inf, reps), a_lo, a_hi)
    if a_hi * (size - 1) < 1.0:
        hi = math.inf  # the corrected level is beyond the resolution of the resamples
    if a_lo * (size - 1) < 1.0:
        lo = -math.inf
    return min(lo, drop), max(hi, drop)


def _jackknife(
    call: Callable[[np.ndarray], tuple[float, float]], n: int, rel: bool, hib: bool, seed: int, groups: int = 200
) -> np.ndarray:
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
