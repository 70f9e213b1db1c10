"""Exact false-PASS rate of the 0/1 relative path (the paired ratio score interval) at the margin.

The verdict of ``compare_scores(base, tuned, max_drop=m, relative=True)`` on 0/1 scores depends
only on the 2x2 table of (base, tuned) outcomes, so at a true relative drop of exactly ``m`` its
PASS rate is a finite sum over tables, each weighted by its multinomial probability. Tables below
``_CUT`` in probability are not evaluated; their whole mass is counted as if they passed, so the
asserted figure is an upper bound of the exact rate. The cells are the corners where the plain
score bound (no continuity correction on the PASS side) passes more often than alpha (an exact
enumeration over n in {50, 100, 150, 300}, base values 0.5-0.95, margins 0.02-0.1: up to 0.062).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_forgetting.stats import PASS, compare_scores

ALPHA = 0.05
_CUT = 1e-10


def _cells(base_value: float, churn: float, margin: float, hib: bool) -> list[float]:
    """P(11), P(10), P(01), P(00) of (base, tuned) 0/1 values with P(tuned = 1) / P(base = 1) equal
    to 1 - margin (accuracy-like) or 1 + margin (error-like); ``churn`` is the good-way flip rate."""
    moved = churn + margin * base_value
    p10, p01 = (moved, churn) if hib else (churn, moved)
    p11 = base_value - p10
    return [p11, p10, p01, 1.0 - p11 - p10 - p01]


def exact_false_pass(n: int, base_value: float, churn: float, margin: float, hib: bool) -> float:
    """Upper bound of the PASS rate at the margin: the exact sum over the evaluated tables plus the
    whole mass of the tables too unlikely to evaluate."""
    probs = _cells(base_value, churn, margin, hib)
    assert min(probs) >= -1e-12
    log_p = [math.log(p) if p > 1e-12 else -math.inf for p in probs]
    lg = [math.lgamma(k + 1) for k in range(n + 1)]
    passed = skipped = 0.0
    for n11 in range(n + 1):
        for n10 in range(n + 1 - n11):
            for n01 in range(n + 1 - n11 - n10):
                counts = (n11, n10, n01, n - n11 - n10 - n01)
                if any(k > 0 and lp == -math.inf for k, lp in zip(counts, log_p)):
                    continue  # a cell of probability 0 observed: the table cannot occur
                lpmf = lg[n] + sum(k * lp - lg[k] for k, lp in zip(counts, log_p) if k > 0)
                pmf = math.exp(lpmf)
                if n11 + n10 == 0:
                    continue  # the base metric is 0: compare_scores refuses (ValueError), no PASS
                if pmf < _CUT:
                    skipped += pmf
                    continue
                base = np.r_[np.ones(n11 + n10), np.zeros(n01 + counts[3])]
                tuned = np.r_[np.ones(n11), np.zeros(n10), np.ones(n01), np.zeros(counts[3])]
                res = compare_scores(base, tuned, max_drop=margin, relative=True, higher_is_better=hib, n_needed=False)
                if res.verdict == PASS:
                    passed += pmf
    return passed + skipped


@pytest.mark.parametrize(
    "n,base_value,churn,margin,hib",
    [
        (50, 0.05, 0.05, 0.02, False),  # error rate 0.05, every base error fixed, 5.1 % newly wrong
        (50, 0.95, 0.05, 0.02, True),  # accuracy 0.95, every base error fixed
        (50, 0.5, 0.45, 0.1, True),  # near-total churn
    ],
)
def test_relative_zero_one_false_pass_is_at_most_alpha(n, base_value, churn, margin, hib):
    assert exact_false_pass(n, base_value, churn, margin, hib) <= ALPHA
