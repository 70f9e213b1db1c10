"""Exact false-PASS / false-FAIL of the 0/1 relative path by enumerating all 2x2 tables."""
import math, sys, time
import numpy as np
from pytest_forgetting.stats.special import _z, _cp_upper
from pytest_forgetting.stats.verdict import _tol
from pytest_forgetting.stats.paired import _Z_CLIP

def tables(n):
    # all (n11, n10, n01, n00) with sum n
    i, j, k = np.meshgrid(np.arange(n + 1), np.arange(n + 1), np.arange(n + 1), indexing="ij")
    m = i + j + k <= n
    t = np.stack([i[m], j[m], k[m]], 1).astype(float)
    return np.column_stack([t, n - t.sum(1)])

def score_vec(cells, theta, shift):
    """vectorised _constrained_score(cells, _ratio_cells_a(theta), shift)."""
    n11, n10, n01, n00 = cells.T
    n = cells.sum(1)
    a = np.array([1.0 - theta, -theta, 1.0, 0.0])
    lo, hi = -n, n / theta
    obs = cells > 0
    def g(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(obs, a * cells / (n[:, None] + mu[:, None] * a), 0.0)
        return terms.sum(1)
    g_lo, g_hi = g(lo), g(hi)
    use_lo = (n01 == 0) & (g_lo <= 0.0)
    use_hi = ~use_lo & (n10 == 0) & (g_hi >= 0.0)
    left, right = lo.copy(), hi.copy()
    for _ in range(64):
        mid = 0.5 * (left + right)
        v = g(mid)
        left = np.where(v > 0, mid, left)
        right = np.where(v > 0, right, mid)
    mu = np.where(use_lo, lo, np.where(use_hi, hi, 0.5 * (left + right)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(obs, cells / (n[:, None] + mu[:, None] * a), 0.0)
    s = (a * p).sum(1)
    p[:, 2] = np.where(use_lo, np.maximum(0.0, -s / a[2]), p[:, 2])
    s = (a * p).sum(1)  # recompute not needed for use_hi since p[:,1]==0 there
    p[:, 1] = np.where(use_hi, np.maximum(0.0, -((a * p).sum(1) - a[1] * p[:, 1]) / a[1]), p[:, 1])
    p = p / p.sum(1, keepdims=True)
    var = (a * a * p).sum(1)
    num = (a * cells).sum(1) + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        zv = np.clip(num / np.sqrt(n * var), -_Z_CLIP, _Z_CLIP)
    return np.where(var <= 1e-300, np.where(num == 0.0, 0.0, np.copysign(_Z_CLIP, num)), zv)

def verdicts(cells, m, alpha, hib, cc_pass=0.0, cc_fail=1.0, fail_alpha=None, need_fail=True):
    """PASS / FAIL indicator per table, by the test at the margin (equivalent to the inverted bound)."""
    af = alpha if fail_alpha is None else fail_alpha
    zp, zf = _z(alpha), _z(af)
    tol = _tol(m)
    n11, n10, n01, n00 = cells.T
    n = cells.sum(1)
    nb, nt = n11 + n10, n11 + n01
    flips = n10 + n01
    ok = nb > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if hib:
            drop = (nb - nt) / nb  # 1 - theta_hat
            # high = 1 - L < m - tol  <=> L > 1 - m + tol <=> Z_{-?}(th) > zp ; lower bound uses shift -cc? (real: lower f uses -cc)
            th_p = 1.0 - (m - tol)
            pass_ = (score_vec(cells, th_p, -cc_pass) > zp) & (drop < m - tol)
            cp = np.array([_cp_upper(0.0, float(k), alpha) if k > 0 else 1.0 for k in nb])
            pass_ &= ~((flips == 0) & ~(cp < m - tol))
            th_f = 1.0 - (m + tol)
            # low = 1 - U > m + tol <=> U < th_f <=> Z_{+cc}(th_f) + zf <= 0
            fail_ = ((score_vec(cells, th_f, cc_fail) + zf <= 0.0) if need_fail else np.zeros(len(cells), bool)) & (drop > m + tol)
        else:
            drop = nt / nb - 1.0
            th_p = 1.0 + (m - tol)
            # high = U - 1 < m - tol <=> U < th_p <=> Z_{+cc}(th_p) + zp <= 0
            pass_ = (score_vec(cells, th_p, cc_pass) + zp <= 0.0) & (drop < m - tol)
            cpv = np.array([_cp_upper(0.0, float(k), alpha) if k > 0 else 1.0 for k in (n - nb)])
            floor = np.where(n > nb, cpv * (n - nb) / np.where(nb > 0, nb, 1), 0.0)
            pass_ &= ~((flips == 0) & (n > nb) & ~(floor < m - tol))
            th_f = 1.0 + (m + tol)
            fail_ = ((score_vec(cells, th_f, -cc_fail) > zf) if need_fail else np.zeros(len(cells), bool)) & (drop > m + tol)
    return pass_ & ok, fail_ & ok

def logpmf(cells, p):
    n = int(cells[0].sum())
    lg = np.array([math.lgamma(k + 1) for k in range(n + 1)])
    idx = cells.astype(int)
    with np.errstate(divide="ignore"):
        lp = np.log(np.clip(np.asarray(p, float), 0.0, 1.0))
    const = lg[n] - lg[idx].sum(1)
    term = np.where(idx > 0, idx * lp, 0.0).sum(1)
    return const + term

def probs_at_margin(pb, pfr, m, hib):
    """cell probs (11,10,01,00) in y-space (y = metric 0/1 value) with true relative drop = m."""
    if hib:
        p01 = pfr; p10 = pfr + m * pb
    else:
        p10 = pfr; p01 = pfr + m * pb
    p11 = pb - p10; p00 = 1 - pb - p01
    return np.array([p11, p10, p01, p00])
