"""Calibration of the slice-gap statistic (``retains(..., max_gap_increase=g)``) by simulation.

For each cell (n examples per slice, K slices, close or far slices) the true best-minus-worst gap
increase equals the margin: both a PASS and a FAIL are wrong there, and each must happen at most
alpha (+ 3 SE) of the time. Two more columns show the power: PASS at no change, FAIL at an
increase of three margins. 0/1 scores with 10 % churn (negative flips on top of the forced ones).

- close: every slice has base accuracy 0.8; the tuned model moves slice 0 up and slice K-1 down.
- far: base accuracies spread over [0.55, 0.8]; the tuned model moves the best up and the worst down.

Usage: python benchmarks/gap_calibration.py [--reps 400] [--out docs/gap_calibration.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_forgetting.gap import min_n_per_slice, simulate  # noqa: E402

ALPHA = 0.05
MARGIN = 0.10


def levels(k: int, kind: str, increase: float) -> tuple[list[float], list[float]]:
    base = np.full(k, 0.8) if kind == "close" else np.linspace(0.55, 0.8, k)
    tuned = base.copy()
    best, worst = (0, k - 1) if kind == "close" else (k - 1, 0)
    tuned[best] += increase / 2
    tuned[worst] -= increase / 2
    return base.tolist(), tuned.tolist()


def se(p: float, reps: int) -> float:
    return math.sqrt(max(p, ALPHA) * (1 - max(p, ALPHA)) / reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = [
        "| n per slice | slices | kind | false PASS at margin (SE) | false FAIL at margin (SE) | PASS at no change | FAIL at 3x margin |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    start = time.perf_counter()
    for n in (50, 100, 300, 1000):
        for k in (2, 5, 10):
            for kind in ("close", "far"):
                b, t = levels(k, kind, MARGIN)
                at = simulate(b, t, n, margin=MARGIN, reps=args.reps, alpha=ALPHA, seed=n * 100 + k)
                b0, t0 = levels(k, kind, 0.0)
                none = simulate(
                    b0, t0, n, margin=MARGIN, reps=max(50, args.reps // 4), alpha=ALPHA, seed=1 + n * 100 + k
                )
                b3, t3 = levels(k, kind, 3 * MARGIN)
                wide = simulate(
                    b3, t3, n, margin=MARGIN, reps=max(50, args.reps // 4), alpha=ALPHA, seed=2 + n * 100 + k
                )
                for p in (at["pass"], at["fail"]):
                    worst = max(worst, p - (ALPHA + 3 * se(p, args.reps)))
                lines.append(
                    f"| {n} | {k} | {kind} | {at['pass']:.3f} ({se(at['pass'], args.reps):.3f}) | {at['fail']:.3f} ({se(at['fail'], args.reps):.3f}) "
                    f"| {none['pass']:.2f} | {wide['fail']:.2f} |"
                )
                print(lines[-1], flush=True)
    seconds = time.perf_counter() - start
    header = [
        "# Calibration of `max_gap_increase` (pytest_forgetting/gap.py)",
        "",
        f"Margin {MARGIN}, alpha {ALPHA}, {args.reps} repetitions per cell at the margin ({max(50, args.reps // 4)} for the power columns), "
        "0/1 scores, churn 0.1. The smallest slice size at which two identical models PASS at this margin: "
        + ", ".join(f"{min_n_per_slice(MARGIN, k, ALPHA)} ({k} slices)" for k in (2, 5, 10))
        + ".",
        "",
        f"Measured with `python benchmarks/gap_calibration.py --reps {args.reps}` on {platform.machine()} CPU in {seconds:.0f} s.",
        "",
    ]
    verdict = (
        "every rate at the margin is <= alpha + 3 SE" if worst <= 0 else f"a rate exceeds alpha + 3 SE by {worst:.3f}"
    )
    notes = [
        "",
        f"Result: {verdict}. The method is a union bound (per slice the paired score bounds of the 0/1 path for the change and exact Clopper-Pearson bounds for the base level, Bonferroni "
        "over the slices), so it is conservative (the score bounds are asymptotic per slice, exact where nothing flipped; the union's slack keeps the rates at the margin far below alpha), with power that needs a few hundred "
        "examples per slice.",
    ]
    text = "\n".join(header + lines + notes) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
