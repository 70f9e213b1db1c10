"""Tests of the statistical decision core (pytest_forgetting.stats).

Three layers: hand-computed reference values, Hypothesis properties that any sane
non-inferiority rule must have, and a seeded simulation showing that the rule holds its error
rate exactly at the margin (where the naive "point estimate <= margin" rule is a coin flip).
"""

from __future__ import annotations

import math

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from pytest_forgetting import stats
from pytest_forgetting.stats import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Budget,
    Comparison,
    Ratio,
    _paired_bounds,
    class_drops,
    clopper_pearson,
    combine_verdicts,
    compare_scores,
    compare_statistic,
    min_n_to_pass,
    nfr_budget,
    ratio_score_interval,
    tango_interval,
    wilson_bounds,
)

RANK = {FAIL: 0, INCONCLUSIVE: 1, PASS: 2}
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def small_n_bootstrap(monkeypatch):
    """The bootstrap-t's arithmetic at small n: lower the floor below which scores with no declared
    range are refused (stats._MIN_UNBOUNDED_N, a policy tested on its own) to the bootstrap's own."""
    monkeypatch.setattr(stats.refusals, "_MIN_UNBOUNDED_N", stats._MIN_BOOTSTRAP_N)


def paired(n11: int, n10: int, n01: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness arrays with the given cell counts (n10 = base right, tuned wrong)."""
    base = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=float)
    tuned = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=float)
    return base, tuned


counts = st.tuples(*(st.integers(0, 120) for _ in range(4))).filter(lambda t: sum(t) > 0)
alphas = st.sampled_from([0.01, 0.025, 0.05, 0.1])


def score_statistic_naive(delta: np.ndarray, b: float, c: float, n: float) -> np.ndarray:
    """Tango's statistic written straight from the paper (naive quadratic root), vectorised."""
    big_a = 2.0 * n
    big_b = -b - c + (2.0 * n - b + c) * delta
    big_c = -c * delta * (1.0 - delta)
    q21 = (np.sqrt(np.maximum(big_b**2 - 4 * big_a * big_c, 0.0)) - big_b) / (2 * big_a)
    var = n * (2 * q21 + delta * (1 - delta))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b - c - n * delta) / np.sqrt(var)


# ------------------------------------------------------------------------------------------
# (a) reference values
# ------------------------------------------------------------------------------------------


def test_tango_reference_example():
    low, high = tango_interval(40, 20, 160, alpha=0.025)
    assert low == pytest.approx(0.031, abs=5e-4)
    assert high == pytest.approx(0.218, abs=5e-4)


@pytest.mark.parametrize("n", [1, 10, 133, 1000])
@pytest.mark.parametrize("alpha", [0.025, 0.05])
def test_tango_no_discordant_pairs_closed_form(n, alpha):
    z = norm.ppf(1 - alpha)
    low, high = tango_interval(0, 0, n, alpha)
    assert high == pytest.approx(z * z / (n + z * z), rel=1e-12)
    assert low == -high


def test_tango_all_flipped_edges():
    z2 = norm.ppf(0.975) ** 2
    low, high = tango_interval(50, 0, 50, alpha=0.025)
    assert high == 1.0
    assert low == pytest.approx((50 - z2) / (50 + z2), rel=1e-9)  # closed form when b = n
    assert tango_interval(0, 50, 50, alpha=0.025) == (-1.0, -low)


@pytest.mark.parametrize(
    "b,c,n,alpha",
    [
        (40, 20, 160, 0.025),
        (3, 0, 40, 0.05),
        (0, 4, 25, 0.05),
        (7, 7, 30, 0.05),
        (1, 0, 1, 0.05),
        (12, 1, 13, 0.01),
        (2.5, 1.25, 60.0, 0.05),
    ],
)
def test_tango_matches_brute_force_inversion(b, c, n, alpha):
    """The interval is exactly the set of deltas the score test does not reject."""
    z = norm.ppf(1 - alpha)
    grid = np.linspace(-1, 1, 400_001)[1:-1]  # step 5e-6
    accepted = grid[np.abs(score_statistic_naive(grid, b, c, n)) <= z]
    low, high = tango_interval(b, c, n, alpha)
    step = grid[1] - grid[0]
    assert accepted.min() == pytest.approx(low, abs=2 * step)
    assert accepted.max() == pytest.approx(high, abs=2 * step)
    # and the acceptance region is one piece (no holes) -- the root finder relies on it
    assert np.all(np.diff(np.flatnonzero(np.abs(score_statistic_naive(grid, b, c, n)) <= z)) == 1)


@pytest.mark.parametrize("alpha", [1e-6, 0.001, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5])
def test_z_quantile_matches_scipy(alpha):
    from pytest_forgetting.stats import _z

    assert _z(alpha) == pytest.approx(norm.ppf(1 - alpha), rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_tango_root_matches_scipy_brentq(seed):
    """The stdlib bisection lands where scipy's brentq does, to 1e-11, on random tables."""
    from scipy.optimize import brentq

    from pytest_forgetting.stats import _tango_lower, _tango_score

    rng = np.random.default_rng(seed)
    for _ in range(40):
        n = int(rng.integers(1, 5000))
        b, c = (int(v) for v in rng.multinomial(n, rng.dirichlet([1, 1, 3]))[:2])
        z = float(norm.ppf(1 - rng.choice([0.01, 0.05, 0.1])))
        dhat = (b - c) / n
        if (b == 0 and c == 0) or dhat == -1.0:
            continue
        ref = brentq(lambda d: -z if d == dhat else _tango_score(d, b, c, n) - z, -1.0, dhat, xtol=1e-13)
        assert _tango_lower(b, c, n, z) == pytest.approx(ref, abs=1e-11)


def test_wilson_against_closed_form():
    # 5 successes of 20, 95% two-sided: the textbook value (0.1119, 0.4687)
    low, high = wilson_bounds(5, 20, alpha=0.025)
    assert (round(low, 4), round(high, 4)) == (0.1119, 0.4687)
    z = norm.ppf(0.95)
    p, n = 0.3, 50
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_bounds(15, 50) == pytest.approx((centre - half, centre + half), rel=1e-12)
    assert wilson_bounds(0, 100) == pytest.approx((0.0, z * z / (100 + z * z)), rel=1e-12)
    assert wilson_bounds(100, 100)[1] == 1.0


def test_min_n_to_pass_and_the_boundary():
    # no flips at all is exact evidence only once 0.98^n <= alpha: n = 149 (Tango's closed form
    # z^2 / (n + z^2) allowed 133, where a true drop of 0.02 shows no flip 6.8 % of the time)
    assert min_n_to_pass(0.02) == 149
    ones = np.ones(149)
    res = compare_scores(ones, ones, max_drop=0.02)
    assert res.verdict == PASS
    assert res.ci_high == pytest.approx(1 - 0.05 ** (1 / 149), rel=1e-12)
    res = compare_scores(ones[:148], ones[:148], max_drop=0.02)
    assert res.verdict == INCONCLUSIVE
    assert res.n_needed == 149 and res.settle_prob == 1.0
    assert min_n_to_pass(0.0) is None
    assert min_n_to_pass(-0.1) is None
    assert min_n_to_pass(1.0) == 1


@pytest.mark.parametrize("margin", [0.001, 0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_min_n_to_pass_is_exactly_the_threshold(margin, alpha):
    n = min_n_to_pass(margin, alpha)
    zeros = np.zeros(n)
    assert compare_scores(zeros, zeros, max_drop=margin, alpha=alpha).verdict == PASS
    if n > 1:
        assert compare_scores(zeros[1:], zeros[1:], max_drop=margin, alpha=alpha).verdict != PASS


def test_bootstrap_agrees_with_normal_approximation():
    rng = np.random.default_rng(42)
    n = 3000
    base = rng.normal(0.7, 0.1, size=n)
    tuned = base - 0.01 + rng.normal(0, 0.05, size=n)
    res = compare_scores(base, tuned, max_drop=0.02, alpha=0.05)
    d = base - tuned
    half = norm.ppf(0.95) * d.std(ddof=1) / math.sqrt(n)
    assert res.method == "bootstrap-t"
    assert res.drop == pytest.approx(d.mean(), abs=1e-12)
    assert res.ci_low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert res.ci_high == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert res.verdict == PASS
    assert res.nfr is None and res.pfr is None


@pytest.mark.usefixtures("small_n_bootstrap")
def test_bootstrap_is_seeded_and_degenerate_case_has_zero_width():
    rng = np.random.default_rng(0)
    base, tuned = rng.normal(size=200), rng.normal(size=200)
    a = compare_scores(base, tuned, max_drop=0.1, seed=3)
    assert a == compare_scores(base, tuned, max_drop=0.1, seed=3)
    assert a != compare_scores(base, tuned, max_drop=0.1, seed=4)
    quarters = rng.integers(0, 40, size=200) / 4.0  # exact in binary floating point
    shifted = compare_scores(quarters, quarters - 0.25, max_drop=0.1)  # every difference 0.25
    # a resample distribution with no spread proves nothing (the population may hold examples
    # unlike any in the sample): never a FAIL, never a PASS
    assert shifted.verdict == INCONCLUSIVE
    assert shifted.ci_low == -math.inf and shifted.ci_high == math.inf
    assert "no spread" in shifted.reason


def test_tango_comparison_fields():
    base, tuned = paired(100, 40, 20, 0)
    res = compare_scores(base, tuned, max_drop=0.02, alpha=0.025)
    assert isinstance(res, Comparison)
    assert res.method == "tango"
    assert res.n == 160
    assert res.drop == pytest.approx(20 / 160)
    assert (res.ci_low, res.ci_high) == _paired_bounds(40, 20, 160, 0.025, 0.025)
    plain = tango_interval(40, 20, 160, 0.025)
    assert res.ci_low < plain[0] and res.ci_high > plain[1]  # the continuity corrections
    assert res.nfr == pytest.approx(40 / 160) and res.pfr == pytest.approx(20 / 160)
    assert res.base == pytest.approx(140 / 160) and res.tuned == pytest.approx(120 / 160)
    assert res.verdict == FAIL and res.n_needed is None
    assert "proven regression" in res.reason and "0.024" in res.reason


def test_improves_is_a_negative_margin():
    base, tuned = paired(300, 5, 120, 75)  # tuned gains ~0.23
    assert compare_scores(base, tuned, max_drop=-0.10).verdict == PASS
    assert compare_scores(base, tuned, max_drop=-0.40).verdict == FAIL


# ------------------------------------------------------------------------------------------
# n_needed
# ------------------------------------------------------------------------------------------


def _settle_rate(b: int, c: int, n: int, m: int, margin: float, alpha: float = 0.05) -> float:
    """Simulated chance that the 0/1 check settles at m examples if the flip rates of (b, c, n) hold."""
    rng = np.random.default_rng(123)
    draws = rng.multinomial(m, [b / n, c / n, 1 - (b + c) / n], size=3000)
    low, high = stats._paired_bounds_vec(draws[:, 0], draws[:, 1], float(m), alpha, alpha)
    return float(np.mean((high < margin) | (low > margin)))


def test_tango_n_needed_settles_with_probability_080():
    base, tuned = paired(170, 12, 8, 10)  # drop 0.02, margin 0.05: too few examples
    res = compare_scores(base, tuned, max_drop=0.05)
    assert res.verdict == INCONCLUSIVE
    m = res.n_needed
    assert m is not None and m > res.n
    assert res.settle_prob >= 0.8
    assert f"{m:,} examples would settle it with probability {res.settle_prob:.2f}" in res.reason
    assert _settle_rate(12, 8, 200, m, 0.05) >= 0.78  # independent simulation agrees
    assert _settle_rate(12, 8, 200, int(m / 1.4), 0.05) < 0.8  # and it is not wildly too large


def test_tango_n_needed_for_a_likely_regression():
    base, tuned = paired(150, 30, 10, 10)  # drop 0.10, margin 0.05
    res = compare_scores(base, tuned, max_drop=0.05, alpha=0.01)
    assert res.verdict == INCONCLUSIVE
    m = res.n_needed
    assert res.settle_prob >= 0.8
    assert _settle_rate(30, 10, 200, m, 0.05, alpha=0.01) >= 0.78


def test_n_needed_none_when_estimate_equals_margin():
    base, tuned = paired(80, 10, 10, 0)
    res = compare_scores(base, tuned, max_drop=0.0)
    assert res.verdict == INCONCLUSIVE and res.n_needed is None
    assert "no sample size" in res.reason
    boot = compare_scores(np.arange(1000.0), np.arange(1000.0), max_drop=0.0)
    assert boot.verdict == INCONCLUSIVE and boot.n_needed is None
    # "no sample size would settle it" only when that is true: a drop off the margin says n
    base, tuned = paired(80, 11, 9, 0)
    off = compare_scores(base, tuned, max_drop=0.0)
    assert off.n_needed is not None and "no sample size" not in off.reason


@pytest.mark.usefixtures("small_n_bootstrap")
def test_n_needed_capped():
    # drop 1e-5 against a margin of 0 with ~100% discordance: ~3e10 examples would be needed
    base, tuned = paired(0, 50_001, 50_000, 0)
    res = compare_scores(base, tuned, max_drop=0.0)
    assert res.verdict == INCONCLUSIVE and res.n_needed is None
    assert "more than 1,000,000,000" in res.reason
    rng = np.random.default_rng(0)
    x = rng.normal(size=100)
    y = x + rng.normal(size=100)
    first = compare_scores(x, y, max_drop=0.0)
    close = compare_scores(x, y, max_drop=first.drop + 1e-7 * (first.ci_high - first.drop))
    assert close.verdict == INCONCLUSIVE and close.n_needed is None


@pytest.mark.usefixtures("small_n_bootstrap")
def test_bootstrap_n_needed_scales_like_inverse_square():
    rng = np.random.default_rng(1)
    base = rng.normal(size=400)
    tuned = base - 0.01 + rng.normal(0, 0.3, size=400)
    res = compare_scores(base, tuned, max_drop=0.03)
    assert res.verdict == INCONCLUSIVE
    z, z80 = norm.ppf(0.95), norm.ppf(0.8)
    spread = (res.ci_high - res.drop) * math.sqrt(400) / z
    expected = ((z + z80) * spread / (0.03 - res.drop)) ** 2
    assert res.n_needed == math.ceil(expected)
    assert res.settle_prob == pytest.approx(norm.cdf((0.03 - res.drop) * math.sqrt(res.n_needed) / spread - z))
    assert res.settle_prob >= 0.8


# ------------------------------------------------------------------------------------------
# (b) properties
# ------------------------------------------------------------------------------------------


@FAST
@given(counts, alphas, st.floats(-0.3, 0.3))
def test_swap_negates_drop_and_mirrors_interval_tango(cells, alpha, margin):
    base, tuned = paired(*cells)
    a = compare_scores(base, tuned, max_drop=margin, alpha=alpha, n_needed=False)
    b = compare_scores(tuned, base, max_drop=margin, alpha=alpha, n_needed=False)
    assert b.drop == -a.drop
    assert (b.ci_low, b.ci_high) == (-a.ci_high, -a.ci_low)
    assert (b.nfr, b.pfr) == (a.pfr, a.nfr)


@FAST
@given(st.lists(st.floats(-5, 5), min_size=100, max_size=130), st.integers(0, 2**32 - 1))
def test_swap_mirrors_bootstrap(xs, seed):
    rng = np.random.default_rng(seed)
    base = np.array(xs)
    tuned = base + rng.normal(size=base.size)
    a = compare_scores(base, tuned, max_drop=0.1, n_boot=199, seed=seed)
    b = compare_scores(tuned, base, max_drop=0.1, n_boot=199, seed=seed)
    assert b.drop == pytest.approx(-a.drop, abs=1e-12)
    assert b.ci_low == pytest.approx(-a.ci_high, abs=1e-12)
    assert b.ci_high == pytest.approx(-a.ci_low, abs=1e-12)


@FAST
@given(counts, alphas, st.floats(-0.5, 0.5), st.floats(0, 0.5))
def test_larger_margin_never_worse(cells, alpha, margin, extra):
    base, tuned = paired(*cells)
    small = compare_scores(base, tuned, max_drop=margin, alpha=alpha, n_needed=False)
    large = compare_scores(base, tuned, max_drop=margin + extra, alpha=alpha, n_needed=False)
    assert RANK[large.verdict] >= RANK[small.verdict]


@FAST
@given(counts, alphas, st.floats(-0.3, 0.3))
def test_more_negative_flips_never_better(cells, alpha, margin):
    n11, n10, n01, n00 = cells
    if n11 == 0:
        n11 = 1
    before = compare_scores(*paired(n11, n10, n01, n00), max_drop=margin, alpha=alpha, n_needed=False)
    after = compare_scores(*paired(n11 - 1, n10 + 1, n01, n00), max_drop=margin, alpha=alpha, n_needed=False)
    assert RANK[after.verdict] <= RANK[before.verdict]
    assert after.ci_low >= before.ci_low - 1e-12
    assert after.ci_high >= before.ci_high - 1e-12


@FAST
@given(
    st.one_of(
        st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=300),
        st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60),
    ),
    st.floats(0, 1),
    alphas,
    st.booleans(),
    st.booleans(),
)
def test_identical_inputs_never_fail(xs, margin, alpha, higher, relative):
    x = np.array(xs)
    if relative and x.mean() == 0:
        x = x + 1.0
    res = compare_scores(
        x,
        x.copy(),
        max_drop=margin,
        alpha=alpha,
        higher_is_better=higher,
        relative=relative,
        n_boot=500,
        n_needed=False,
    )
    assert res.verdict != FAIL
    assert res.drop == 0


@FAST
@given(counts, alphas)
def test_interval_contains_point_estimate_tango(cells, alpha):
    res = compare_scores(*paired(*cells), max_drop=0.05, alpha=alpha, n_needed=False)
    assert res.ci_low <= res.drop <= res.ci_high
    assert -1 <= res.ci_low and res.ci_high <= 1


@FAST
@given(
    st.lists(st.tuples(st.floats(0.01, 10), st.floats(0.01, 10)), min_size=100, max_size=130),
    st.booleans(),
    st.booleans(),
)
def test_interval_contains_point_estimate_bootstrap(pairs, relative, higher):
    base = np.array([p[0] for p in pairs])
    tuned = np.array([p[1] for p in pairs])
    res = compare_scores(base, tuned, max_drop=0.05, relative=relative, higher_is_better=higher, n_boot=100)
    assert res.ci_low <= res.drop <= res.ci_high


@FAST
@given(counts, alphas, st.floats(-0.3, 0.3))
def test_lower_is_better_mirrors_higher_is_better_binary(cells, alpha, margin):
    base, tuned = paired(*cells)
    hib = compare_scores(base, tuned, max_drop=margin, alpha=alpha, n_needed=False)
    lib = compare_scores(1 - base, 1 - tuned, max_drop=margin, alpha=alpha, higher_is_better=False, n_needed=False)
    assert lib.method == "tango"
    assert (lib.verdict, lib.drop, lib.ci_low, lib.ci_high, lib.nfr, lib.pfr) == (
        hib.verdict,
        hib.drop,
        hib.ci_low,
        hib.ci_high,
        hib.nfr,
        hib.pfr,
    )
    assert lib.base == pytest.approx(1 - hib.base) and lib.tuned == pytest.approx(1 - hib.tuned)


@FAST
@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=100, max_size=130), st.floats(-1, 1))
def test_lower_is_better_mirrors_higher_is_better_continuous(pairs, margin):
    base = np.array([p[0] for p in pairs])
    tuned = np.array([p[1] for p in pairs])
    # 0/1 inputs go to Tango's interval while their negation goes to the bootstrap: not this property;
    # nor are samples where nothing differs (their bound depends on the scores' range)
    hypothesis.assume(not (np.isin(base, (0, 1)).all() and np.isin(tuned, (0, 1)).all()))
    hypothesis.assume(np.ptp(base - tuned) > 0)
    hib = compare_scores(base, tuned, max_drop=margin, n_boot=150)
    lib = compare_scores(-base, -tuned, max_drop=margin, n_boot=150, higher_is_better=False)
    assert lib.verdict == hib.verdict
    assert lib.drop == pytest.approx(hib.drop, abs=1e-12)
    assert lib.ci_low == pytest.approx(hib.ci_low, abs=1e-12)
    assert lib.ci_high == pytest.approx(hib.ci_high, abs=1e-12)


# ------------------------------------------------------------------------------------------
# (c) simulation: the error rate at the margin
# ------------------------------------------------------------------------------------------


def _upper_bounds(b: np.ndarray, c: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Decision upper bounds for many replications (the vectorised form of _paired_bounds)."""
    return stats._paired_bounds_vec(b.astype(float), c.astype(float), float(n), alpha, alpha)[1]


def test_pass_rate_at_the_margin_is_at_most_alpha():
    rng = np.random.default_rng(20240601)
    n, reps, alpha, margin = 500, 2000, 0.05, 0.03
    # joint outcome probabilities: both right, neg flip, pos flip, both wrong.
    # base accuracy 0.85 + 0.05 = 0.9; paired drop 0.05 - 0.02 = 0.03 = the margin.
    probs = [0.85, 0.05, 0.02, 0.08]
    cells = rng.multinomial(n, probs, size=reps)
    b, c = cells[:, 1], cells[:, 2]
    upper = _upper_bounds(b, c, n, alpha)
    pass_rate = np.mean(upper < margin)
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert pass_rate <= alpha + 3 * se
    naive_rate = np.mean((b - c) / n <= margin)
    assert 0.4 <= naive_rate <= 0.65
    # the end-to-end function agrees with the bound used above
    for i in range(5):
        base, tuned = paired(*cells[i])
        res = compare_scores(base, tuned, max_drop=margin, alpha=alpha)
        assert (res.verdict == PASS) == bool(upper[i] < margin)


def test_power_when_nothing_was_lost():
    rng = np.random.default_rng(7)
    n, reps, margin = 2000, 400, 0.03
    cells = rng.multinomial(n, [0.84, 0.03, 0.03, 0.10], size=reps)
    upper = _upper_bounds(cells[:, 1], cells[:, 2], n, 0.05)
    assert np.mean(upper < margin) >= 0.95


# ------------------------------------------------------------------------------------------
# compare_statistic
# ------------------------------------------------------------------------------------------


def macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


def test_compare_statistic_macro_f1():
    rng = np.random.default_rng(5)
    n, k = 600, 4
    y = rng.integers(0, k, size=n)
    pb = np.where(rng.random(n) < 0.9, y, rng.integers(0, k, size=n))
    pt = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, size=n))

    def stat(idx):
        return macro_f1(y[idx], pb[idx], k), macro_f1(y[idx], pt[idx], k)

    res = compare_statistic(stat, n, max_drop=0.05, n_boot=500)
    assert res.method == "bca" and res.nfr is None and res.pfr is None
    assert res.base == pytest.approx(macro_f1(y, pb, k))
    assert res.verdict == FAIL
    assert res.ci_low <= res.drop <= res.ci_high


@pytest.mark.parametrize("seed", range(3))
def test_compare_statistic_identical_never_fails(seed):
    rng = np.random.default_rng(seed)
    n, k = 300, 3
    y = rng.integers(0, k, size=n)
    p = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, size=n))
    from pytest_forgetting.metrics import F1_MACRO, ratio_of

    ratio = ratio_of(F1_MACRO, {"label": y, "pred": p}, {"label": y, "pred": p})
    for margin in (0.0, 0.01, 0.2):
        # a black-box statistic with no spread proves nothing
        res = compare_statistic(lambda i: (macro_f1(y[i], p[i], k),) * 2, n, max_drop=margin, n_boot=200, seed=seed)
        assert res.verdict == INCONCLUSIVE and res.drop == 0.0
        # the ratio form knows the metric moves by a bounded amount per changed example
        exact = compare_statistic(None, n, max_drop=margin, ratio=ratio, bounded=True)
        assert exact.method == "exact-no-change" and exact.verdict != FAIL
        assert exact.verdict == (PASS if margin == 0.2 else INCONCLUSIVE)


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("higher", [False, True])
@pytest.mark.usefixtures("small_n_bootstrap")
def test_compare_statistic_of_means_reproduces_compare_scores(relative, higher):
    """The ratio form with unit denominators is the mean: both give the same bootstrap-t bounds."""
    rng = np.random.default_rng(11)
    base = rng.gamma(2.0, size=250)
    tuned = base * rng.uniform(0.8, 1.1, size=250)
    a = compare_scores(base, tuned, max_drop=0.02, relative=relative, higher_is_better=higher, n_boot=300, seed=9)
    ones = np.ones(250)
    b = compare_statistic(
        lambda i: (base[i].mean(), tuned[i].mean()),
        250,
        max_drop=0.02,
        relative=relative,
        higher_is_better=higher,
        n_boot=300,
        seed=9,
        ratio=Ratio(base, ones, tuned, ones, den_fixed=True),
    )
    assert a.method == b.method == "bootstrap-t"
    for field in ("drop", "ci_low", "ci_high", "base", "tuned"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), abs=1e-10)
    assert a.verdict == b.verdict


def test_perplexity_style_lower_is_better_relative():
    rng = np.random.default_rng(3)
    n = 400
    tokens = rng.integers(5, 50, size=n)
    nll_b = tokens * rng.normal(2.0, 0.2, size=n)
    nll_t = nll_b + tokens * rng.normal(0.3, 0.05, size=n)  # per-token NLL up 0.3 -> ppl x1.35

    def ppl(idx):
        return (math.exp(nll_b[idx].sum() / tokens[idx].sum()), math.exp(nll_t[idx].sum() / tokens[idx].sum()))

    res = compare_statistic(ppl, n, max_drop=0.10, relative=True, higher_is_better=False, n_boot=300)
    assert res.drop == pytest.approx(res.tuned / res.base - 1)
    assert res.verdict == FAIL
    ok = compare_statistic(ppl, n, max_drop=0.6, relative=True, higher_is_better=False, n_boot=300)
    assert ok.verdict == PASS


# ------------------------------------------------------------------------------------------
# budgets
# ------------------------------------------------------------------------------------------


def test_class_drops_names_the_collapsed_class_first():
    rng = np.random.default_rng(2)
    k, per = 10, 150
    labels = np.repeat(np.arange(k), per)
    base = rng.random(k * per) < 0.95
    tuned = base.copy()
    collapsed = labels == 3
    tuned[collapsed] = base[collapsed] & (rng.random(per) < 0.2)
    names = [f"digit-{i}" for i in range(k)]
    budgets = class_drops(base, tuned, labels, limit=0.10, class_names=names)
    assert len(budgets) == k and all(isinstance(x, Budget) for x in budgets)
    assert budgets[0].name == "digit-3"
    assert budgets[0].verdict == FAIL and budgets[0].n == per
    assert all(x.verdict == PASS for x in budgets[1:])
    assert combine_verdicts(*(x.verdict for x in budgets)) == FAIL
    values = [x.value for x in budgets]
    assert values == sorted(values, reverse=True)


def test_class_drops_bonferroni_only_on_the_fail_side():
    base, tuned = paired(60, 30, 0, 10)  # one class, drop 0.3
    labels = np.zeros(100, dtype=int)
    (single,) = class_drops(base, tuned, labels, limit=0.1, alpha=0.05)
    from scipy.stats import beta

    # exact lower bound: Clopper-Pearson of the negative-flip rate minus that of the positive
    # one, each at alpha / 2
    low = beta.ppf(0.025, 30, 71) - (1 - 0.025 ** (1 / 100))
    high = _paired_bounds(30, 0, 100, 0.05, 0.05)[1]
    assert single.ci_low == pytest.approx(low, abs=1e-12)
    assert single.ci_high == high
    assert single.verdict == FAIL
    # the same data as one of 20 classes: lower bound at alpha / (2 * 20), upper bound unchanged
    b2 = np.concatenate([base, np.ones(19 * 100)])
    t2 = np.concatenate([tuned, np.ones(19 * 100)])
    l2 = np.concatenate([labels, np.repeat(np.arange(1, 20), 100)])
    worst = class_drops(b2, t2, l2, limit=0.1, alpha=0.05, class_names={0: "zero"})[0]
    assert worst.name == "zero"
    low20 = beta.ppf(0.05 / 40, 30, 71) - (1 - (0.05 / 40) ** (1 / 100))
    assert worst.ci_low == pytest.approx(low20, abs=1e-12) and low20 < low
    assert worst.ci_high == high


def test_class_drops_identical_all_pass_with_string_labels():
    rng = np.random.default_rng(4)
    labels = rng.choice(["cat", "dog", "eel"], size=900)
    correct = rng.random(900) < 0.7
    budgets = class_drops(correct, correct, labels, limit=0.05)
    assert {b.name for b in budgets} == {"cat", "dog", "eel"}
    assert all(b.verdict == PASS and b.value == 0 for b in budgets)


def test_nfr_budget_three_ways():
    n = 1000
    none = nfr_budget(np.ones(n), np.ones(n), limit=0.01)
    assert none.verdict == PASS and none.value == 0 and none.name == "nfr"
    assert none.ci_high == pytest.approx(1 - 0.05 ** (1 / n))  # exact (Clopper-Pearson)
    many = np.ones(n)
    many[:50] = 0
    assert nfr_budget(np.ones(n), many, limit=0.01).verdict == FAIL
    some = np.ones(n)
    some[:10] = 0
    budget = nfr_budget(np.ones(n), some, limit=0.01)
    assert budget.verdict == INCONCLUSIVE
    assert (budget.ci_low, budget.ci_high) == clopper_pearson(10, n, 0.05)
    # positive flips are not negative flips
    assert nfr_budget(some, np.ones(n), limit=0.01).value == 0


def test_combine_verdicts():
    assert combine_verdicts(PASS, PASS) == PASS
    assert combine_verdicts(PASS, INCONCLUSIVE, PASS) == INCONCLUSIVE
    assert combine_verdicts(INCONCLUSIVE, FAIL, PASS) == FAIL
    with pytest.raises(ValueError):
        combine_verdicts()
    with pytest.raises(ValueError, match="unknown verdict"):
        combine_verdicts(PASS, "ok")


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,tuned,kwargs,match",
    [
        ([1, 0, 1], [1, 0], {}, "aligned"),
        ([], [], {}, "empty"),
        ([1.0, np.nan], [1.0, 1.0], {}, "non-finite"),
        ([1.0, 1.0], [np.inf, 1.0], {}, "non-finite"),
        ([[1, 0]], [[1, 0]], {}, "1-D"),
        ([1, 0], [1, 0], {"alpha": 0.0}, "alpha"),
        ([1, 0], [1, 0], {"alpha": 0.5}, "alpha"),
        ([1, 0], [1, 0], {"max_drop": float("nan")}, "max_drop"),
        ([1, 0], [1, 0], {"n_boot": 0}, "n_boot"),
        (["a", "b"], ["a", "b"], {}, "numeric"),
        ([0.0, 0.0], [1.0, 0.5], {"relative": True}, "relative"),
    ],
)
def test_compare_scores_rejects_bad_input(base, tuned, kwargs, match):
    kwargs = {"max_drop": 0.02, **kwargs}
    with pytest.raises(ValueError, match=match):
        compare_scores(base, tuned, **kwargs)


def test_other_validation():
    with pytest.raises(ValueError, match="n must be positive"):
        tango_interval(0, 0, 0)
    with pytest.raises(ValueError):
        tango_interval(5, 6, 10)
    with pytest.raises(ValueError, match="alpha"):
        tango_interval(1, 1, 10, alpha=0.7)
    with pytest.raises(ValueError):
        wilson_bounds(3, 2)
    with pytest.raises(ValueError):
        min_n_to_pass(0.02, alpha=1.0)
    with pytest.raises(ValueError, match="0/1"):
        class_drops([0.5, 1], [1, 1], [0, 1], limit=0.1)
    with pytest.raises(ValueError, match="aligned"):
        class_drops([1, 1], [1, 1], [0], limit=0.1)
    with pytest.raises(ValueError, match="aligned"):
        nfr_budget([1, 1], [1], limit=0.1)
    with pytest.raises(ValueError, match="positive integer"):
        compare_statistic(lambda i: (1.0, 1.0), 0, max_drop=0.1)
    with pytest.raises(ValueError, match="pair"):
        compare_statistic(lambda i: 1.0, 5, max_drop=0.1)
    with pytest.raises(ValueError, match="not finite"):
        compare_statistic(lambda i: (1.0, float("nan")), 5, max_drop=0.1)


def test_speed_on_ten_thousand_examples():
    import time

    rng = np.random.default_rng(0)
    base = (rng.random(10_000) < 0.9).astype(float)
    tuned = np.where(rng.random(10_000) < 0.03, 1 - base, base)
    start = time.perf_counter()
    compare_scores(base, tuned, max_drop=0.01)
    assert time.perf_counter() - start < 0.2


# ------------------------------------------------------------------------------------------
# the new intervals against references
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (1.0, 3.0), (3.0, 18.0), (11.0, 990.0), (500.0, 501.0), (2.0, 200000.0)])
def test_incomplete_beta_and_its_quantile_match_scipy(a, b):
    from scipy.special import betainc
    from scipy.stats import beta

    for x in (1e-6, 0.001, 0.01, 0.2, 0.5, 0.8, 0.999):
        assert stats._betainc(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-9, abs=1e-13)
    for p in (1e-5, 0.0025, 0.05, 0.5, 0.95, 0.9975):
        assert stats._beta_quantile(p, a, b) == pytest.approx(beta.ppf(p, a, b), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 22), (1, 22), (3, 20), (10, 1000), (999, 1000), (50, 50), (7, 100000)])
@pytest.mark.parametrize("alpha", [0.0005, 0.025, 0.05])
def test_clopper_pearson_matches_scipy(k, n, alpha):
    from scipy.stats import beta

    low, high = clopper_pearson(k, n, alpha)
    ref_low = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
    ref_high = 1.0 if k == n else beta.ppf(1 - alpha, k + 1, n - k)
    assert low == pytest.approx(ref_low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(ref_high, rel=1e-9, abs=1e-15)


def test_clopper_pearson_textbook_value():
    # 5 of 20, 95 % two-sided: (0.0866, 0.4910) (Clopper and Pearson's tables; also R's binom.test)
    low, high = clopper_pearson(5, 20, alpha=0.025)
    assert (round(low, 4), round(high, 4)) == (0.0866, 0.4910)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    with pytest.raises(ValueError):
        clopper_pearson(1.5, 10)


def test_ratio_score_interval_reference_values():
    # Fagerland, Lydersen and Laake, "Statistical Analysis of Contingency Tables" (2017), chapter 8:
    # airway hyper-responsiveness before/after stem cell transplantation (Bentur et al. 2009),
    # ratio 0.25, Tang asymptotic score 95 % interval 0.0653 to 0.9069.
    low, high = ratio_score_interval(1, 7, 1, 12, alpha=0.025)
    assert (round(low, 4), round(high, 4)) == (0.0653, 0.9069)


def _reference_ratio_score(theta, cells):
    """The score statistic from a numerical constrained MLE (scipy SLSQP): an independent check
    of the KKT solution used by pytest_forgetting."""
    from scipy.optimize import minimize

    c = np.array(cells, dtype=float)
    a = np.array([1 - theta, -theta, 1.0, 0.0])

    def nll(p):
        return -np.sum(np.where(c > 0, c * np.log(np.maximum(p, 1e-300)), 0.0))

    cons = [{"type": "eq", "fun": lambda p: p.sum() - 1}, {"type": "eq", "fun": lambda p: a @ p}]
    best = min(
        (
            minimize(
                nll, x0, constraints=cons, bounds=[(0, 1)] * 4, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500}
            )
            for x0 in (np.full(4, 0.25), (c + 0.5) / (c + 0.5).sum())
        ),
        key=lambda r: r.fun,
    )
    return float(a @ c) / math.sqrt(c.sum() * float(np.sum(a * a * best.x)))


@pytest.mark.parametrize("cells", [(40, 10, 5, 45), (59, 16, 6, 80), (20, 3, 0, 10), (5, 0, 2, 30), (300, 12, 3, 85)])
def test_ratio_score_interval_matches_a_numerical_mle(cells):
    from scipy.optimize import brentq

    z = norm.ppf(0.975)
    est = (cells[0] + cells[2]) / (cells[0] + cells[1])
    low, high = ratio_score_interval(*cells, alpha=0.025)
    ref_low = brentq(lambda t: _reference_ratio_score(t, cells) - z, 1e-4, est * (1 - 1e-9))
    ref_high = brentq(lambda t: _reference_ratio_score(t, cells) + z, est * (1 + 1e-9), 50.0)
    assert low == pytest.approx(ref_low, rel=1e-6)
    assert high == pytest.approx(ref_high, rel=1e-6)


@pytest.mark.parametrize("b,c,n", [(40, 20, 160), (3, 0, 40), (0, 4, 25), (7, 7, 30), (12, 1, 13)])
def test_generic_constrained_score_reproduces_tango(b, c, n):
    """Tango's statistic is the same multinomial score test under p12 - p21 = delta; the generic
    KKT solver (which also serves the ratio) must agree with Tango's closed form."""
    cells = [n - b - c, b, c, 0]  # (concordant, neg flip, pos flip, concordant)
    for delta in (-0.3, -0.05, 0.0, 0.1, 0.4):
        a = [-delta, 1 - delta, -1 - delta, -delta]
        generic = stats._constrained_score(cells, a, 0.0)
        assert generic == pytest.approx(stats._tango_score(delta, b, c, n), rel=1e-8, abs=1e-9)


def test_relative_zero_one_uses_the_ratio_interval():
    base, tuned = paired(300, 30, 12, 58)  # base accuracy 0.825, tuned 0.78
    res = compare_scores(base, tuned, max_drop=0.2, relative=True)
    assert res.method == "ratio-score"
    assert res.drop == pytest.approx(1 - 312 / 330)
    theta_low, _ = ratio_score_interval(300, 30, 12, 58, alpha=0.05)
    # the PASS-side end is the score bound with half a count of continuity correction (exactly
    # <= alpha at the margin, tests/unit/test_relative_exact.py): a little above the plain end
    corrected = stats.paired._ratio_bound([300.0, 30.0, 12.0, 58.0], stats._z(0.05), upper=False, cc=0.5)
    assert res.ci_high == pytest.approx(1 - corrected)
    assert 1 - theta_low < res.ci_high < 1 - theta_low + 0.005
    assert res.verdict == PASS
    # lower is better: the error rate's relative increase
    err = compare_scores(1 - base, 1 - tuned, max_drop=0.5, relative=True, higher_is_better=False)
    assert err.method == "ratio-score" and err.drop == pytest.approx(88 / 70 - 1)


# ------------------------------------------------------------------------------------------
# edge cases from issue 11
# ------------------------------------------------------------------------------------------


def test_identical_small_relative_does_not_pass():
    res = compare_scores(np.ones(5), np.ones(5), max_drop=0.01, relative=True)
    assert res.verdict == INCONCLUSIVE
    assert res.n_needed == min_n_to_pass(0.01)  # all five base-correct: n_needed counts them


def test_float_rounding_is_not_a_proven_regression():
    res = compare_scores(np.full(100, 0.5), np.full(100, 0.48), max_drop=0.02)
    assert res.verdict == INCONCLUSIVE
    # a bound that equals the margin up to rounding proves nothing either way
    assert stats._decide(0.02 + 1e-15, 0.03, 0.02) == INCONCLUSIVE
    assert stats._decide(-0.01, 0.02 - 1e-15, 0.02) == INCONCLUSIVE
    assert stats._decide(-0.01, 0.0199, 0.02) == PASS


def test_one_clear_error_per_bad_input():
    with pytest.raises(ValueError, match="labels contain 1 missing"):
        class_drops([1, 1, 0], [1, 0, 0], [0.0, np.nan, 1.0], limit=0.1)
    with pytest.raises(ValueError, match="labels contain 1 missing"):
        class_drops([1, 1], [1, 0], np.array(["a", None], dtype=object), limit=0.1)
    with pytest.raises(ValueError, match="overflow"):
        compare_scores([1e308, -1e308, 0.0], [-1e308, 1e308, 0.0], max_drop=0.1)
    with pytest.raises(ValueError, match="overflows"):
        compare_statistic(lambda i: (1e308, -1e308), 5, max_drop=0.1)
    with pytest.raises(ValueError, match="n_boot=1 is too few"):
        compare_scores([0.2, 0.4], [0.1, 0.3], max_drop=0.1, n_boot=1)
    with pytest.raises(ValueError, match="at least 500"):
        compare_statistic(lambda i: (1.0, 1.0), 5, max_drop=0.1, alpha=0.01, n_boot=200)
    with pytest.raises(ValueError, match="empty"):
        nfr_budget([], [], limit=0.1)
    with pytest.raises(ValueError, match="aligned"):
        class_drops([1, 1, 1], [1, 1, 1], [0, 1], limit=0.1)
    with pytest.raises(ValueError, match="fail_alpha"):
        compare_scores([1, 0], [1, 0], max_drop=0.1, fail_alpha=0.0)
    with pytest.raises(ValueError, match="one row per example"):
        compare_statistic(None, 3, max_drop=0.1, ratio=Ratio([1, 2], [1, 1], [1, 2], [1, 1]))
    with pytest.raises(ValueError, match="different metrics"):
        compare_statistic(lambda i: (0.5, 0.5), 2, max_drop=0.1, ratio=Ratio([1.0, 2.0], [1, 1], [1.0, 2.0], [1, 1]))


def test_fail_alpha_only_moves_the_fail_bound():
    base, tuned = paired(300, 30, 10, 60)
    full = compare_scores(base, tuned, max_drop=0.02)
    split = compare_scores(base, tuned, max_drop=0.02, fail_alpha=0.05 / 3)
    assert split.ci_high == full.ci_high
    assert split.ci_low < full.ci_low
    assert split.fail_alpha == pytest.approx(0.05 / 3) and split.alpha == 0.05
    nb = nfr_budget(base, tuned, limit=0.05, fail_alpha=0.01)
    assert nb.ci_low == pytest.approx(clopper_pearson(30, 400, 0.01)[0])


def test_bounded_aggregate_refused_below_the_smallest_n():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=100)
    p = np.where(rng.random(100) < 0.3, (y + 1) % 3, y)
    from pytest_forgetting.metrics import F1_MACRO, ratio_of

    ratio = ratio_of(F1_MACRO, {"label": y, "pred": y}, {"label": y, "pred": p})
    res = compare_statistic(None, 100, max_drop=0.02, ratio=ratio, bounded=True)
    assert res.verdict == INCONCLUSIVE and res.method == "refused"
    assert res.n_needed == 149 and "smallest n" in res.reason
    # not bounded: the floor of unbounded ratios (a drop carried by a few examples can hide)
    unbounded = compare_statistic(None, 100, max_drop=0.02, ratio=ratio)
    assert unbounded.verdict == INCONCLUSIVE and unbounded.method == "refused"
    assert unbounded.n_needed == stats._MIN_UNBOUNDED_N and "weigh like 100" in unbounded.reason


def test_bootstrap_refuses_below_its_smallest_n():
    rng = np.random.default_rng(3)
    base = rng.normal(size=60)
    res = compare_scores(base, base + 5.0 + rng.normal(size=60), max_drop=0.1, higher_is_better=False)
    assert res.verdict == INCONCLUSIVE and res.method == "refused"
    assert res.n_needed == stats._MIN_UNBOUNDED_N and "no declared range" in res.reason
    assert "score_range=(low, high)" in res.reason and "\n" not in res.reason
    # from the floor on, the bootstrap decides; identical models too (on the sample's own range)
    n = stats._MIN_UNBOUNDED_N
    base = rng.normal(size=n)
    assert compare_scores(base, base + 5.0 + rng.normal(size=n), max_drop=0.1).verdict == PASS
    assert compare_scores(base[: n - 1], base[: n - 1] + 5.0, max_drop=0.1).method == "refused"
    same = compare_scores(base, base, max_drop=0.1)
    assert same.verdict == PASS and same.method == "no-change-sample-range"


def test_macro_average_refuses_a_class_seen_a_handful_of_times():
    from pytest_forgetting.metrics import F1_MACRO, ratio_of

    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(3, dtype=int), rng.integers(1, 4, size=297)]  # class 0: three examples
    wrong = y % 3 + 1  # mistakes never predict class 0
    p = np.where(rng.random(300) < 0.9, y, wrong)
    q = np.where(rng.random(300) < 0.9, y, wrong)
    ratio = ratio_of(F1_MACRO, {"label": y, "pred": p}, {"label": y, "pred": q})
    res = compare_statistic(None, 300, max_drop=0.05, ratio=ratio, bounded=True)
    assert res.verdict == INCONCLUSIVE and res.method == "refused"
    assert "rarest class" in res.reason and res.n_needed > 300


@pytest.mark.usefixtures("small_n_bootstrap")
def test_bootstrap_n_needed_settles_about_080_of_the_time():
    """Drawing n_needed examples from the observed sample itself (the observed rates), the check
    settles in about 80 % of the runs."""
    rng = np.random.default_rng(8)
    base = rng.normal(size=200)
    tuned = base + rng.normal(0.0, 1.0, size=200)
    res = compare_scores(base, tuned, max_drop=0.1, n_boot=400)
    assert res.verdict == INCONCLUSIVE and res.n_needed is not None
    diff = base - tuned
    settled = 0
    for _ in range(60):
        pick = rng.integers(0, 200, size=res.n_needed)
        again = compare_scores(diff[pick], np.zeros(res.n_needed), max_drop=0.1, n_boot=400, n_needed=False)
        settled += again.verdict != INCONCLUSIVE
    assert settled / 60 >= 0.65


# -- exact Sensitivity rules of bounded aggregates (issue 11: smallest-n rule for macro metrics) --


def _class_outputs(y, pb, pt):
    return {"label": np.asarray(y), "pred": np.asarray(pb)}, {"label": np.asarray(y), "pred": np.asarray(pt)}


def _agg_compare(metric, ob, ot, margin, **kw):
    from pytest_forgetting.metrics import ratio_of

    agg = metric.aggregate
    return stats.compare_statistic(
        lambda idx: (agg(ob, idx), agg(ot, idx)),
        len(ob["label"]),
        ratio=ratio_of(metric, ob, ot),
        bounded=True,
        sensitivity=metric.sensitivity(ob, ot),
        max_drop=margin,
        **kw,
    )


def test_stratified_upper_is_clopper_pearson_for_one_stratum_and_the_optimum_for_several():
    from pytest_forgetting.stats import _stratified_upper

    assert _stratified_upper(np.array([149.0]), np.array([1.0]), 0.05) == pytest.approx(
        1 - 0.05 ** (1 / 149), rel=1e-12
    )
    assert _stratified_upper(np.array([100.0]), np.array([2.5]), 0.05) == pytest.approx(
        2.5 * (1 - 0.05**0.01), rel=1e-12
    )
    counts, slopes = np.array([30.0, 120.0, 50.0]), np.array([0.5, 0.2, 0.9])
    best = _stratified_upper(counts, slopes, 0.05)
    rng = np.random.default_rng(0)  # no feasible point (P(no change) >= alpha) does better
    g = rng.random((200_000, 3)) ** 3 * 0.2
    feasible = (counts * np.log1p(-g)).sum(axis=1) >= math.log(0.05)
    assert (g[feasible] @ slopes).max() <= best + 1e-12
    assert (g[feasible] @ slopes).max() > best * 0.97
    assert _stratified_upper(np.array([10.0, 0.0]), np.array([0.0, 3.0]), 0.05) == 0.0


def test_identical_macro_f1_and_balanced_accuracy_pass_from_their_exact_smallest_n():
    from pytest_forgetting.metrics import BALANCED_ACCURACY, F1_MACRO

    y = np.tile(np.arange(5), 60)  # 300 examples, 60 per class
    pred = np.where(np.arange(300) % 7 == 0, (y + 1) % 5, y)
    ob, ot = _class_outputs(y, pred, pred)
    f1 = _agg_compare(F1_MACRO, ob, ot, 0.05)
    assert f1.verdict == "pass" and f1.method == "exact-no-change"
    assert f1.ci_high == pytest.approx(2.5 * (1 - 0.05 ** (1 / 300)), rel=1e-9)  # balanced: slope 2 + 1/2
    ba = _agg_compare(BALANCED_ACCURACY, ob, ot, 0.02)
    assert ba.verdict == "pass" and ba.ci_high == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-9)  # = the 0/1 rule
    # the smallest balanced set that passes is where 2.5 (1 - alpha^(1/n)) first drops below the margin
    exact = next(n for n in range(5, 1000, 5) if 2.5 * (1 - 0.05 ** (1 / n)) < 0.05 * (1 - 1e-9))
    for n, verdict in ((exact - 5, "inconclusive"), (exact, "pass")):
        yy = np.tile(np.arange(5), n // 5)
        cmp = _agg_compare(F1_MACRO, *_class_outputs(yy, yy, yy), 0.05)
        assert cmp.verdict == verdict, (n, cmp)
    assert (
        cmp.n == 150
        and "if, as here, no example changes"
        in _agg_compare(F1_MACRO, *_class_outputs(yy[:145], yy[:145], yy[:145]), 0.05).reason
    )


def test_a_collapsed_head_fails_macro_f1_exactly_although_the_bootstrap_has_no_spread():
    """Base right on every example, the tuned model wrong on every one (each class mapped to the
    next): every resample gives the same drop, so the SE is 0; the exact reference rule (every
    class's examples identical) bounds each model's distance from its sample value instead."""
    from pytest_forgetting.metrics import BALANCED_ACCURACY, F1_MACRO, ratio_of

    y = np.repeat(np.arange(3), 80)
    ob, ot = _class_outputs(y, y, (y + 1) % 3)
    agg = F1_MACRO.aggregate
    plain = stats.compare_statistic(
        lambda idx: (agg(ob, idx), agg(ot, idx)), 240, ratio=ratio_of(F1_MACRO, ob, ot), bounded=True, max_drop=0.05
    )
    assert plain.verdict == "inconclusive" and "standard error of the drop is 0" in plain.reason
    for metric in (F1_MACRO, BALANCED_ACCURACY):
        cmp = _agg_compare(metric, ob, ot, 0.05)
        assert cmp.verdict == "fail" and cmp.method == "exact-reference" and cmp.drop == 1.0, (metric.name, cmp)
        assert 0.9 < cmp.ci_low < 1.0
    # a small sample cannot prove it: 12 examples, 4 per class
    few = _agg_compare(F1_MACRO, *_class_outputs(y[::20], y[::20], (y[::20] + 1) % 3), 0.95)
    assert few.verdict == "inconclusive"


def test_relative_macro_f1_bootstrap_raises_no_runtime_warning():
    import warnings

    from pytest_forgetting.metrics import F1_MACRO, ratio_of

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    pb = np.full(200, 2)
    pb[:2] = y[:2]  # the base is right twice: many resamples have a base F1 of 0
    pt = pb.copy()
    pt[5:9] = y[5:9]
    ob, ot = _class_outputs(y, pb, pt)
    agg = F1_MACRO.aggregate
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cmp = stats.compare_statistic(
            lambda idx: (agg(ob, idx), agg(ot, idx)),
            200,
            ratio=ratio_of(F1_MACRO, ob, ot),
            bounded=True,
            max_drop=0.05,
            relative=True,
        )
    assert cmp.verdict in ("inconclusive", "fail")


# ---- vectorised resampling (issue 18, point 2): the fast paths against straightforward references ----


def _f1_outputs(n: int, k: int = 3, seed: int = 5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pb = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
    pt = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), pb)
    return {"label": y, "pred": pb}, {"label": y, "pred": pt}


def test_grouped_ratio_resamples_match_the_black_box_metric():
    """Macro-F1 resampled as multinomial counts over the (label, base, tuned) groups: every
    replicate equals f1_macro on the examples those counts stand for, and its delta-method SE
    equals the per-example computation on the same resample."""
    from pytest_forgetting.metrics import F1_MACRO, f1_macro, ratio_of

    n = 400
    ob, ot = _f1_outputs(n)
    parts = stats._RatioParts(ratio_of(F1_MACRO, ob, ot), n)
    assert parts.sizes is not None and parts.sizes.size <= 27 and parts.sizes.sum() == n
    codes, first = stats._distinct_rows(parts.yb, parts.xb, parts.yt, parts.xt)
    w = next(stats._count_chunks(parts.sizes, n, 200, seed=3, width=parts.width))[:40]
    assert (w.sum(axis=1) == n).all()
    reps, se = parts.drop_and_se(w, False, True, grouped=True)
    for row, r, s in zip(w, reps, se):
        idx = np.repeat(first, row.astype(int))  # any member of a group stands for all of them
        assert r == pytest.approx(f1_macro(ob, idx) - f1_macro(ot, idx), abs=1e-12)
        per_example = np.bincount(idx, minlength=n).astype(float)[None, :]
        r1, s1 = parts.drop_and_se(per_example, False, True)
        assert (r, s) == pytest.approx((r1[0], s1[0]), abs=1e-12)


def test_multinomial_counts_have_the_distribution_of_resampled_indices():
    """Counts per group of n uniform indices are Multinomial(n, sizes / n): mean n p, covariance
    n (diag p - p p^T); the multinomial draw reproduces both."""
    sizes = np.array([1.0, 3.0, 6.0, 10.0])
    n = 20
    w = np.concatenate(list(stats._count_chunks(sizes, n, 40000, seed=1)))
    p = sizes / n
    se_mean = np.sqrt(n * p * (1 - p) / w.shape[0])
    assert np.all(np.abs(w.mean(axis=0) - n * p) < 5 * se_mean)
    assert np.allclose(np.cov(w.T), n * (np.diag(p) - np.outer(p, p)), atol=0.1)


def _reference_bootstrap_t(b, t, rel, hib, n_boot, seed, alpha, fail_alpha):
    """The bootstrap-t of compare_scores written out plainly: n indices per resample, the mean
    (relative: linearised drop) and its standard error on the gathered examples."""
    n = b.size
    sign = 1.0 if hib else -1.0

    def stat(idx):
        bb, tt = b[idx], t[idx]
        mb, mt = bb.mean(), tt.mean()
        d = sign * (bb - tt)
        if not rel:
            return d.mean(), d.std(ddof=1) / math.sqrt(n)
        r = sign * (mb - mt) / abs(mb)
        infl = ((d - d.mean()) - r * np.sign(mb) * (bb - mb)) / abs(mb)
        return r, infl.std(ddof=1) / math.sqrt(n)

    drop, se = stat(np.arange(n))
    out = [stat(row) for idx in stats._index_chunks(n, n_boot, seed) for row in idx]
    reps, ses = (np.array(v) for v in zip(*out))
    return stats._studentized_bounds(drop, se, reps, ses, alpha, fail_alpha)


@pytest.mark.parametrize("rel", [False, True])
@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.usefixtures("small_n_bootstrap")
def test_compare_scores_bootstrap_matches_reference(rel, quantised):
    """Distinct scores: the same index stream, so the same bounds to float rounding. Repeated
    scores (resampled as groups by multinomial): a different stream of the same distribution, so
    the bounds agree to Monte Carlo error, and each replicate equals the plain computation on the
    examples its counts stand for."""
    rng = np.random.default_rng(11)
    n = 300
    b = 3.0 + rng.normal(0, 0.5, n)
    t = b + 0.05 + rng.normal(0, 0.3, n)
    if quantised:
        b, t = np.round(b * 2) / 2, np.round(t * 2) / 2
    boots = 4000 if quantised else 1000
    kw = dict(max_drop=0.05 if rel else 0.1, relative=rel, higher_is_better=False, seed=4, n_boot=boots)
    got = stats.compare_scores(b, t, fail_alpha=0.025, **kw)
    low, high = _reference_bootstrap_t(b, t, rel, False, boots, 4, 0.05, 0.025)
    tol = 0.1 * (high - low) if quantised else 1e-9  # Monte Carlo error of a tail quantile of 4000 resamples
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high), abs=tol)
    diff = t - b
    reps, ses = stats._moment_replicates(b, t, diff, rel, False, 100, 4)
    if quantised:
        codes, first = stats._distinct_rows(b[:, None], t[:, None]) if rel else (None, None)
        if not rel:
            values, codes = np.unique(diff, return_inverse=True)
            first = np.array([np.flatnonzero(codes == g)[0] for g in range(values.size)])
        sizes = np.bincount(codes.reshape(-1)).astype(float)
        w = np.concatenate(list(stats._count_chunks(sizes, n, 100, 4, 5 if rel else 2)))
        rows = [np.repeat(first, row.astype(int)) for row in w]
    else:
        rows = [row for idx in stats._index_chunks(n, 100, 4) for row in idx]
    for idx, r, s in zip(rows, reps, ses):
        bb, tt = b[idx], t[idx]
        d = tt - bb
        if rel:
            mb = bb.mean()
            ref_r = (tt.mean() - mb) / abs(mb)
            ref_s = (((d - d.mean()) - ref_r * np.sign(mb) * (bb - mb)) / abs(mb)).std(ddof=1) / math.sqrt(n)
        else:
            ref_r, ref_s = d.mean(), d.std(ddof=1) / math.sqrt(n)
        assert (r, s) == pytest.approx((ref_r, ref_s), rel=1e-9, abs=1e-12)


def _class_drops_reference(bc, tc, labels, limit, alpha, fail_alpha):
    """class_drops written out class by class with the scalar bounds."""
    classes = np.unique(labels)
    a_each = fail_alpha / (2.0 * len(classes))
    out = []
    for cls in classes:
        mask = labels == cls
        nk = int(mask.sum())
        b = int(np.count_nonzero(bc[mask] & ~tc[mask]))
        c = int(np.count_nonzero(~bc[mask] & tc[mask]))
        _, high = stats._paired_bounds(b, c, nk, alpha, fail_alpha)
        low = stats._cp_lower(b, nk, a_each) - stats._cp_upper(c, nk, a_each)
        out.append((str(cls), (b - c) / nk, nk, low, high, stats._decide(low, high, limit)))
    return sorted(out, key=lambda r: (-r[1], -r[3]))


def test_class_drops_vectorised_matches_the_scalar_bounds():
    """All classes at once (bincount, element-wise Tango and Clopper-Pearson) against the
    class-by-class scalar code: same classes, values and verdicts; Tango's ends bit for bit, the
    beta quantiles to 1e-13 (numpy's log / exp against the math module's)."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 2500))
        k = int(rng.integers(1, 80))
        labels = rng.integers(0, k, n)
        bc = rng.random(n) < rng.random()
        tc = np.where(rng.random(n) < rng.random() * 0.5, ~bc, bc)
        if trial % 5 == 0:
            tc = bc.copy()
        if trial % 9 == 0:
            tc = ~bc
        limit = float(rng.choice([0.0, 0.05, 0.1, 1.0, -0.05]))
        got = stats.class_drops(bc.astype(float), tc.astype(float), labels, limit=limit, fail_alpha=0.025)
        ref = _class_drops_reference(bc, tc, labels, limit, 0.05, 0.025)
        assert len(got) == len(ref)
        for g, (name, value, nk, low, high, verdict) in zip(got, ref):
            assert (g.name, g.value, g.n, g.verdict) == (name, value, nk, verdict)
            assert g.ci_low == pytest.approx(low, abs=1e-13) and g.ci_high == pytest.approx(high, abs=1e-13)
    b = np.array([0.0, 3.0, 7.0, 10.0, 0.0, 5.0])
    c = np.array([0.0, 0.0, 2.0, 0.0, 4.0, 5.0])
    n = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 200.0])
    for cc in (0.0, 1.0):
        ends = stats._tango_lower_arr(b, c, n, stats._z(0.05), cc)
        assert ends.tolist() == [stats._tango_lower(x, y, m, stats._z(0.05), cc) for x, y, m in zip(b, c, n)]


@pytest.mark.parametrize("transform", ["identity", "exp"])
@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("width", [1, 2])
def test_ratio_gram_se_matches_per_example_influence(transform, relative, width):
    """Per-example resamples of a one- or two-column ratio: the drop and SE from the weighted
    Gram matrix equal the plain per-example influence computation on the same counts."""
    rng = np.random.default_rng(width)
    n = 500
    den = (2 + rng.poisson(30, (n, width))).astype(float)
    mu = 3.0 + rng.normal(0, 0.3, (n, width))
    num_b = den * mu
    num_t = den * (mu + 0.02 + rng.normal(0, 0.2, (n, width)))
    parts = stats._RatioParts(stats.Ratio(num_b, den, num_t, den, transform=transform, den_fixed=True), n)
    assert parts.gram is not None
    w = next(stats._count_chunks(None, n, 64, seed=2, width=width))
    got = parts.drop_and_se(w, relative, False)
    parts.gram = None
    ref = parts.drop_and_se(w, relative, False)
    assert got[0] == pytest.approx(ref[0], rel=1e-12, abs=1e-14)
    assert got[1] == pytest.approx(ref[1], rel=1e-9)


def test_bounded_ratio_needs_an_effective_size_of_100():
    """Entity F1 / WER as ratios of sums: when a few sentences hold most of the entities they carry
    the drop, and the floor of 100 examples counts Kish's effective size of the denominators
    (a review found false PASS 0.19 at n = 100 with 1.5 % of sentences holding 60 entities each)."""
    rng = np.random.default_rng(3)
    n = 300
    gold = np.where(np.arange(n) < 5, 60.0, 1.0 + rng.poisson(1.0, n))  # 5 entity-dense sentences
    tp_b = np.floor(gold * 0.9)
    tp_t = tp_b.copy()
    tp_t[:5] = np.floor(gold[:5] * 0.6)
    heavy = Ratio(2 * tp_b, tp_b + gold, 2 * tp_t, tp_t + gold)
    eff = stats._effective_size(heavy.den_base, heavy.den_tuned)
    assert eff < 100 <= n
    cmp = compare_statistic(None, n, max_drop=0.05, ratio=heavy, bounded=True)
    assert cmp.verdict == "inconclusive" and cmp.method == "refused" and cmp.ci_low == -math.inf
    assert f"weigh like {eff:,.0f}" in cmp.reason and cmp.n_needed > n
    # the same sentences without the dense ones: the bootstrap decides as before
    light = Ratio(2 * tp_b[5:], tp_b[5:] + gold[5:], 2 * tp_t[5:], tp_t[5:] + gold[5:])
    assert compare_statistic(None, n - 5, max_drop=0.05, ratio=light, bounded=True).method != "refused"
