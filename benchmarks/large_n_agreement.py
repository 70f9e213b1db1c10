"""The analytic large-n interval (stats._edgeworth_bounds, method edgeworth-t) against the bootstrap-t it
replaces, where both run (issue 18, point 2): for each path and n, eval sets whose true drop sweeps the
margin from -3 to +3 standard errors; per path and n, how often the two verdicts agree, and the largest and
median distance between their bounds in standard errors (the bootstrap's own Monte-Carlo error is ~0.05 SE).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_n_agreement.py [--sets 30] [--sizes 20000,50000] [--results]``
"""

from __future__ import annotations

import argparse
import math
import time
import zlib

import numpy as np

from pytest_forgetting import stats
from pytest_forgetting.metrics import PERPLEXITY, ratio_of


def decide(path: str, n: int, rng: np.random.Generator, sweep: float, seed: int):
    """One eval set of ``path`` whose drop is sweep standard errors from its margin (approximately)."""
    common = dict(alpha=0.05, fail_alpha=0.025, seed=seed, higher_is_better=False, n_needed=False)
    if path.startswith("continuous"):
        b = 3.0 + rng.normal(0, 0.5, n)
        noise = rng.normal(0, 0.3, n) + 0.1 * (rng.exponential(1.0, n) - 1.0)  # skewed differences
        if path.endswith("absolute"):
            t = b + 0.05 + sweep * 0.316 / math.sqrt(n) + noise
            return lambda: stats.compare_scores(b, t, max_drop=0.05, **common)
        t = b * (1.0 + 0.02 + sweep * 0.11 / math.sqrt(n)) + noise
        return lambda: stats.compare_scores(b, t, max_drop=0.02, relative=True, **common)
    ntok = (2 + rng.poisson(3, n) * rng.integers(1, 20, n)).astype(float)
    mu = 3.0 + rng.exponential(1.0, n)
    shift = math.log1p(0.01) + sweep * 0.0117 / math.sqrt(n) * 3.0
    ob = {"nll": ntok * mu, "ntok": ntok}
    ot = {"nll": ntok * (mu + shift + rng.normal(0, 0.3, n)), "ntok": ntok}
    return lambda: stats.compare_statistic(
        None, n, ratio=ratio_of(PERPLEXITY, ob, ot), max_drop=0.01, relative=True, **common
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--sizes", default="20000,50000")
    ap.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args()
    paths = ("continuous absolute", "continuous relative", "perplexity relative")
    keep = stats.bootstrap._ANALYTIC_MIN_N  # set on the module that reads it
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for path in paths:
        for n in (int(x) for x in args.sizes.split(",")):
            rng = np.random.default_rng(n + zlib.crc32(path.encode()))  # independent data per path and n
            agree, dists, verdicts, t_fast, t_slow = 0, [], [], 0.0, 0.0
            for i in range(args.sets):
                run = decide(path, n, rng, -3.0 + 6.0 * i / max(1, args.sets - 1), seed=i)
                stats.bootstrap._ANALYTIC_MIN_N = min(n, keep)
                t = time.perf_counter()
                fast = run()
                t_fast += time.perf_counter() - t
                stats.bootstrap._ANALYTIC_MIN_N = 10**12
                t = time.perf_counter()
                slow = run()
                t_slow += time.perf_counter() - t
                stats.bootstrap._ANALYTIC_MIN_N = keep
                assert fast.method == "edgeworth-t" and slow.method == "bootstrap-t", (fast.method, slow.method)
                se = (slow.ci_high - slow.ci_low) / (stats._z(0.05) + stats._z(0.025))
                dists += [abs(fast.ci_high - slow.ci_high) / se, abs(fast.ci_low - slow.ci_low) / se]
                agree += fast.verdict == slow.verdict
                verdicts.append(slow.verdict)
            mix = ", ".join(f"{v} {verdicts.count(v)}" for v in ("pass", "inconclusive", "fail") if verdicts.count(v))
            row = (
                f"| {path} | {n:,} | {agree} / {args.sets} | {max(dists):.3f} | {float(np.median(dists)):.3f} | {mix} | "
                f"{t_fast / args.sets:.3f} | {t_slow / args.sets:.2f} |"
            )
            print(row, flush=True)
            rows.append(row)
    head = [
        "| path | n | same verdict | max bound distance (SE) | median (SE) | bootstrap-t verdicts | analytic s | bootstrap-t s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(head + rows))
    if args.results:
        from bucketing import write_section

        write_section(
            "large-n-agreement",
            [
                "### Analytic large-n interval vs the bootstrap-t (`benchmarks/large_n_agreement.py`)",
                "",
                f"Per path and n, {args.sets} eval sets whose true drop sweeps the margin from -3 to +3 standard errors (skewed per-example "
                "differences; perplexity with long-tailed lengths); each decided by both methods (n_boot = 2000, alpha 0.05 / fail_alpha 0.025). "
                "Bound distances in standard errors of the drop; the bootstrap-t's own Monte-Carlo error is about 0.05 SE. "
                f"Run {started}, 2-CPU machine shared with other jobs (times are per decision).",
                "",
                *head,
                *rows,
            ],
        )


if __name__ == "__main__":
    main()
