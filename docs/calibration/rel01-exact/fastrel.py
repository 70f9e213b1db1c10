"""Fast verdicts of the 0/1 relative path (closed-form restricted MLE root) + truncated enumeration at the margin."""
import math, sys, time, os
import numpy as np
from pytest_forgetting.stats.special import _z, _cp_upper
from pytest_forgetting.stats.verdict import _tol
from pytest_forgetting.stats.paired import _Z_CLIP, _CC_RATIO_PASS, _CC_FAIL

def score_fast(cells, theta, shift):
    c11, c10, c01, c00 = cells.T
    n = cells.sum(1)
    A, B, C = 1.0 - theta, -theta, 1.0
    a = np.array([A, B, C, 0.0])
    lo, hi = -n, n / theta
    obs = cells > 0
    def g(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(obs, a * cells / (n[:, None] + mu[:, None] * a), 0.0).sum(1)
    def gp(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(obs, a * a * cells / (n[:, None] + mu[:, None] * a) ** 2, 0.0).sum(1)
    g_lo = np.where(c01 > 0, np.inf, (c11 * A + c10 * B) / (n - n * np.array(0.0)) * 0 + 0)  # placeholder
    # exact end values as in the scalar code (cells with n_j>0 at lo -> +inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_lo = np.where(c01 > 0, np.inf, g(lo))
        g_hi = np.where(c10 > 0, -np.inf, g(hi))
    use_lo = (c01 == 0) & (g_lo <= 0.0)
    use_hi = ~use_lo & (c10 == 0) & (g_hi >= 0.0)
    S = c11 + c10 + c01
    A2 = A * B * C * S
    A1 = n * (c11 * A * (B + C) + c10 * B * (A + C) + c01 * C * (A + B))
    A0 = n * n * (c11 * A + c10 * B + c01 * C)
    disc = np.maximum(A1 * A1 - 4 * A2 * A0, 0.0)
    q = -0.5 * (A1 + np.where(A1 >= 0, 1.0, -1.0) * np.sqrt(disc))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = q / A2; r2 = A0 / q
    in1 = (r1 > lo) & (r1 < hi); in2 = (r2 > lo) & (r2 < hi)
    mu = np.where(in1 & ~in2, r1, np.where(in2 & ~in1, r2, np.nan))
    bad = np.isnan(mu) & ~use_lo & ~use_hi
    if bad.any():  # fallback bisection
        idx = np.flatnonzero(bad)
        sub = cells[idx]; l, r = lo[idx].copy(), hi[idx].copy()
        def gs(m_):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(sub > 0, a * sub / (n[idx][:, None] + m_[:, None] * a), 0.0).sum(1)
        for _ in range(200):
            mid = 0.5 * (l + r); v = gs(mid)
            l = np.where(v > 0, mid, l); r = np.where(v > 0, r, mid)
        mu[idx] = 0.5 * (l + r)
    inner = ~use_lo & ~use_hi
    for _ in range(2):  # Newton polish, kept inside the interval
        with np.errstate(divide="ignore", invalid="ignore"):
            step = mu - g(mu) / gp(mu)
        ok = inner & np.isfinite(step) & (step > lo) & (step < hi)
        mu = np.where(ok, step, mu)
    mu = np.where(use_lo, lo, np.where(use_hi, hi, mu))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(obs, cells / (n[:, None] + mu[:, None] * a), 0.0)
    p[:, 2] = np.where(use_lo, np.maximum(0.0, -(a * p).sum(1) / a[2]), p[:, 2])
    p[:, 1] = np.where(use_hi, np.maximum(0.0, -((a * p).sum(1) - a[1] * p[:, 1]) / a[1]), p[:, 1])
    p = p / p.sum(1, keepdims=True)
    var = (a * a * p).sum(1)
    num = (a * cells).sum(1) + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        zv = np.clip(num / np.sqrt(n * var), -_Z_CLIP, _Z_CLIP)
    return np.where(var <= 1e-300, np.where(num == 0.0, 0.0, np.copysign(_Z_CLIP, num)), zv)

def _cpvec(k, alpha):
    u, inv = np.unique(k, return_inverse=True)
    vals = np.array([_cp_upper(0.0, float(x), alpha) if x > 0 else 1.0 for x in u])
    return vals[inv]

def verdicts(cells, m, alpha, hib, cc_pass=_CC_RATIO_PASS, cc_fail=_CC_FAIL, score=score_fast):
    zp = zf = _z(alpha)
    tol = _tol(m)
    n11, n10, n01, n00 = cells.T
    n = cells.sum(1)
    nb, nt = n11 + n10, n11 + n01
    flips = n10 + n01
    ok = nb > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if hib:
            drop = (nb - nt) / nb
            pass_ = (score(cells, 1.0 - (m - tol), -cc_pass) > zp) & (drop < m - tol)
            z0 = flips == 0
            if z0.any():
                cp = np.ones(len(cells)); cp[z0] = _cpvec(nb[z0], alpha)
                pass_ &= ~(z0 & ~(cp < m - tol))
            fail_ = (score(cells, 1.0 - (m + tol), cc_fail) + zf <= 0.0) & (drop > m + tol)
        else:
            drop = nt / nb - 1.0
            pass_ = (score(cells, 1.0 + (m - tol), cc_pass) + zp <= 0.0) & (drop < m - tol)
            z0 = (flips == 0) & (n > nb)
            if z0.any():
                cp = np.zeros(len(cells)); cp[z0] = _cpvec((n - nb)[z0], alpha) * (n - nb)[z0] / np.where(nb[z0] > 0, nb[z0], 1)
                pass_ &= ~(z0 & ~(cp < m - tol))
            fail_ = (score(cells, 1.0 + (m + tol), -cc_fail) > zf) & (drop > m + tol)
    return pass_ & ok, fail_ & ok
