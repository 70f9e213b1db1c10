import sys, time, numpy as np
from fastrel import verdicts, score_fast
from relenum import probs_at_margin
from pytest_forgetting.stats import compare_scores
from pytest_forgetting.stats.verdict import PASS, FAIL
from pytest_forgetting.stats.paired import _CC_RATIO_PASS, _CC_FAIL
from pytest_forgetting.stats.special import _z
n = int(sys.argv[1]); k = int(sys.argv[2])
rng = np.random.default_rng(n + 7)
bad = tot = 0; t0 = time.time(); npass = nfail = 0
for hib in (True, False):
    for m in (0.02, 0.05, 0.1):
        rows = []
        for _ in range(400):
            acc = rng.choice([0.5, 0.7, 0.8, 0.9, 0.95]); pb = acc if hib else 1 - acc
            top = min(pb * (1 - m), 1 - pb) if hib else min(pb, 1 - pb - m * pb)
            pfr = rng.uniform(0, top) * rng.choice([1, 0.1, 0.01])
            mm = m * rng.uniform(0.5, 1.5)
            pr = probs_at_margin(pb, pfr, min(mm, m * 1.0) if False else m, hib)
            rows.append(rng.multinomial(n, np.clip(pr, 0, 1) / np.clip(pr, 0, 1).sum(), 50))
        T = np.concatenate(rows).astype(float); T = T[T[:, 0] + T[:, 1] > 0]
        th = 1 - m if hib else 1 + m
        zz = score_fast(T, th, -_CC_RATIO_PASS if hib else _CC_RATIO_PASS)
        stat = zz if hib else -zz
        thf = 1 - m if hib else 1 + m
        zf = score_fast(T, thf, _CC_FAIL if hib else -_CC_FAIL); statf = -zf if hib else zf
        d = np.minimum(np.abs(stat - _z(0.05)), np.abs(statf - _z(0.05)))
        near = np.argsort(d)[: k]
        pick = np.r_[near, rng.choice(len(T), k // 2, replace=False)]
        sel = T[pick]
        P, F = verdicts(sel, m, 0.05, hib)
        for row, p, f in zip(sel.astype(int), P, F):
            b = np.r_[np.ones(row[0]+row[1]), np.zeros(row[2]+row[3])]
            t = np.r_[np.ones(row[0]), np.zeros(row[1]), np.ones(row[2]), np.zeros(row[3])]
            v = compare_scores(b, t, max_drop=m, relative=True, higher_is_better=hib, n_needed=False).verdict
            tot += 1; npass += v == PASS; nfail += v == FAIL
            if (v == PASS) != p or (v == FAIL) != f:
                bad += 1
                print("mismatch", hib, m, row, v, p, f)
        print(hib, m, "checked", len(sel), "bad", bad, "min |stat-z| %.2e" % d[near].min(), "%.0fs" % (time.time() - t0), flush=True)
print("n", n, "total", tot, "PASS", npass, "FAIL", nfail, "mismatches", bad)
