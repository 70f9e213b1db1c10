"""min_n_to_pass at every margin: the exact boundary of the comparisons' floating-point rule, found in a
bounded number of steps (a margin of 1e-8 took 80 s by the former one-step walk, and one within the tie
tolerance of 0 never returned: a Hypothesis example hung the suite) (issue 11, point 8)."""

from __future__ import annotations

import math
import time

import pytest

from pytest_forgetting.stats import min_n_to_pass
from pytest_forgetting.stats.paired import _MAX_PASS_N, _no_change_upper
from pytest_forgetting.stats.verdict import _below


def _passes(n: int, margin: float, alpha: float) -> bool:
    return bool(_below(_no_change_upper(n, alpha), margin))


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("margin", [0.9, 0.5, 0.1, 0.05, 0.02, 0.01, 1e-3, 1e-4, 1e-5, 3e-7, 1e-8])
def test_the_boundary_of_the_rule(margin, alpha):
    n = min_n_to_pass(margin, alpha)
    assert n is not None and n >= 1
    assert _passes(n, margin, alpha)
    assert n == 1 or not _passes(n - 1, margin, alpha)
    # the closed form it starts from, (1 - m)^n < alpha, moved by at most the tie tolerance (1e-9 of the
    # margin's scale, at least 1e-9) that the rule asks the bound to clear
    closed = math.log(alpha) / math.log1p(-margin)
    assert abs(n - closed) <= 2 + n * (1e-6 + 2e-9 / margin)


def test_the_documented_value():
    assert min_n_to_pass(0.02, 0.05) == 149
    assert min_n_to_pass(1.0) == 1 and min_n_to_pass(0.0) is None


@pytest.mark.parametrize("margin", [1e-9, 5e-10, 1e-12, 1e-300, 5e-324])
def test_a_margin_within_the_tie_tolerance_never_passes_and_returns_at_once(margin):
    start = time.perf_counter()
    n = min_n_to_pass(margin)
    assert time.perf_counter() - start < 1.0
    assert n is None or n <= _MAX_PASS_N
    if n is None:  # nothing passes, even at the largest n
        assert not _passes(_MAX_PASS_N, margin, 0.05)


@pytest.mark.parametrize("relative", [False, True])
def test_identical_models_at_a_margin_within_the_tie_tolerance(relative):
    """The Hypothesis example that hung the suite: identical 0/1 scores, margin 1e-10 (a relative one took the
    exact no-flip branch, which asked min_n_to_pass for an n that does not exist)."""
    import numpy as np

    from pytest_forgetting.stats import compare_scores

    x = np.r_[np.ones(200), np.zeros(100)]
    res = compare_scores(x, x.copy(), max_drop=1e-10, relative=relative)
    assert res.verdict == "inconclusive" and res.n_needed is None
    assert "no sample size would settle it" in res.reason
