"""The tail rule of the unbounded paths (pytest_forgetting/tail_rule.py): the effective size of the
influence values, (sum z^2)^2 / sum z^4, and the refusals it triggers in compare_scores (a mean with
no declared range) and compare_statistic (an unbounded ratio such as perplexity)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_forgetting import stats, tail_rule
from pytest_forgetting.metrics import PERPLEXITY, ratio_of
from pytest_forgetting.stats import INCONCLUSIVE, PASS, Ratio
from pytest_forgetting.stats.ratio import _RatioParts

# -- reference values, by hand ----------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1.0, -1.0, 1.0, -1.0], 4.0),  # z^2 = 1 each: 4^2 / 4
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100.0 / 34.0),  # z = -2..2: 10^2 / 34
        ([0.0, 0.0, 0.0, 1.0], 12.0 / 7.0),  # z = (-1, -1, -1, 3) / 4: 0.75^2 / 0.328125
        ([5.0, 5.0, 5.0], 0.0),  # no spread
    ],
)
def test_influence_size_reference_values(values, expected):
    assert tail_rule.influence_size(np.array(values)) == pytest.approx(expected, rel=1e-12)


def test_one_example_apart_weighs_like_one():
    # one value apart from n - 1 equal ones: n^2 (n - 1) / (1 + (n - 1)^3), which tends to 1
    for n in (4, 10, 1000):
        x = np.zeros(n)
        x[0] = 1.0
        assert tail_rule.influence_size(x) == pytest.approx(n * n * (n - 1) / (1 + (n - 1) ** 3), rel=1e-9)


def test_influence_size_is_scale_free_and_safe():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert tail_rule.influence_size(x * 1e200) == pytest.approx(100.0 / 34.0, rel=1e-12)
    assert tail_rule.influence_size(x * 1e-200 + 7.0) == pytest.approx(tail_rule.influence_size(x * 1e-200 + 7.0))
    assert tail_rule.influence_size(np.array([])) == 0.0
    assert tail_rule.influence_size(np.array([1.0, np.inf])) == 0.0
    assert tail_rule.too_few(tail_rule.MIN_INFLUENCE_SIZE - 1e-9)
    assert not tail_rule.too_few(tail_rule.MIN_INFLUENCE_SIZE)
    assert tail_rule.too_few(math.nan)


def test_normal_values_weigh_like_a_third():
    rng = np.random.default_rng(0)
    assert tail_rule.influence_size(rng.normal(size=200_000)) == pytest.approx(200_000 / 3, rel=0.03)


def test_mean_influence_by_hand():
    b, d = np.array([1.0, 3.0]), np.array([0.5, -0.1])
    assert tail_rule.mean_influence(b, d, relative=False) == pytest.approx([0.3, -0.3])
    # mb = 2, md = 0.2, r = 0.1: ((d - md) - r (b - mb)) / mb
    assert tail_rule.mean_influence(b, d, relative=True) == pytest.approx([0.2, -0.2])


def test_ratio_influence_is_the_delta_method_se():
    """The ratio's influence values are the terms of its delta-method standard error."""
    rng = np.random.default_rng(1)
    n = 500
    tok = 2.0 + rng.poisson(30, n)
    mu = 3.0 + rng.normal(0, 0.3, n)
    ratio = Ratio(tok * mu, tok, tok * (mu + rng.normal(0.02, 0.1, n)), tok, transform="exp", den_fixed=True)
    parts = _RatioParts(ratio, n)
    for rel in (False, True):
        infl = parts.influence(rel, False)
        _, se = parts.drop_and_se(np.ones((1, n)), rel, False)
        assert abs(infl.sum()) < 1e-6 * np.abs(infl).sum()
        assert math.sqrt(np.sum(infl * infl) / (n - 1) / n) == pytest.approx(float(se[0]), rel=1e-9)


# -- the refusals -----------------------------------------------------------------------------


def _pareto_nll(n: int, seed: int, tail: float = 1.5, p_bad: float = 0.01, mean_size: float = 4.0):
    """Per-example NLL, 1 % of the examples worse by a Pareto amount (tail index 1.5: infinite
    variance), the true mean drop equal to the margin 0.1."""
    rng = np.random.default_rng(seed)
    base = 3.0 + rng.normal(0, 0.5, n)
    bad = rng.random(n) < p_bad
    size = mean_size * (1.0 + rng.pareto(tail, n)) * (tail - 1.0) / tail
    return base, base + 0.1 - p_bad * mean_size + rng.normal(0, 0.2, n) + np.where(bad, size, 0.0)


def test_pareto_change_is_refused_at_5000():
    base, tuned = _pareto_nll(5000, seed=3)
    assert tail_rule.influence_size(tuned - base) < tail_rule.MIN_INFLUENCE_SIZE
    res = stats.compare_scores(base, tuned, max_drop=0.1, higher_is_better=False)
    assert res.verdict == INCONCLUSIVE and res.method == "refused"
    assert res.n_needed is None and res.settle_prob is None
    assert "effective size of the change" in res.reason and "declare score_range" in res.reason
    assert "\n" not in res.reason
    # a declared range is another path, unaffected by the rule
    lo, hi = float(min(base.min(), tuned.min())), float(max(base.max(), tuned.max()))
    ranged = stats.compare_scores(base, tuned, max_drop=0.1, higher_is_better=False, score_range=(lo, hi))
    assert ranged.method != "refused"


def test_normal_sample_is_not_refused_at_1000():
    rng = np.random.default_rng(4)
    base = 3.0 + rng.normal(0, 0.5, 1000)
    tuned = base + rng.normal(0, 0.2, 1000)
    assert tail_rule.influence_size(tuned - base) > 4 * tail_rule.MIN_INFLUENCE_SIZE
    for rel in (False, True):
        res = stats.compare_scores(base, tuned, max_drop=0.1, relative=rel, higher_is_better=False)
        assert res.method == "bootstrap-t" and res.verdict == PASS


def test_perplexity_refused_when_a_few_texts_carry_the_change():
    rng = np.random.default_rng(5)
    n = 5000
    tok = 2.0 + rng.poisson(30, n)
    mu = 3.0 + rng.normal(0, 0.3, n)
    ob = {"nll": tok * mu, "ntok": tok}
    light = {"nll": tok * (mu + rng.normal(0, 0.1, n)), "ntok": tok}
    res = stats.compare_statistic(
        None, n, max_drop=0.05, relative=True, higher_is_better=False, ratio=ratio_of(PERPLEXITY, ob, light)
    )
    assert res.method == "bootstrap-t" and res.verdict == PASS
    bad = rng.random(n) < 0.01
    size = 2.0 * (1.0 + rng.pareto(1.5, n)) / 3.0
    heavy = {"nll": tok * (mu - 0.02 + rng.normal(0, 0.1, n) + np.where(bad, size, 0.0)), "ntok": tok}
    res = stats.compare_statistic(
        None, n, max_drop=0.05, relative=True, higher_is_better=False, ratio=ratio_of(PERPLEXITY, ob, heavy)
    )
    assert res.verdict == INCONCLUSIVE and res.method == "refused" and res.n_needed is None
    assert "effective size of the change" in res.reason and "unbounded ratio metric" in res.reason


@pytest.mark.parametrize("n", [50, 2000])
def test_one_constant_score_says_what_settles_it(n):
    """Identical constant scores: no number of such examples can pass; a declared range can."""
    res = stats.compare_scores(np.full(n, 2.5), np.full(n, 2.5), max_drop=0.1, higher_is_better=False)
    assert res.verdict == INCONCLUSIVE and res.n_needed is None
    assert "score_range" in res.reason and "more examples of one constant score cannot settle it" in res.reason
    ranged = stats.compare_scores(
        np.full(n, 2.5), np.full(n, 2.5), max_drop=0.1, higher_is_better=False, score_range=(0.0, 5.0)
    )
    assert ranged.verdict in (PASS, INCONCLUSIVE) and ranged.method != "refused"
