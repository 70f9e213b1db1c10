"""Betting bounds for per-example scores in a declared range (issue 11): reference values from an
independent, loop-by-loop implementation of the capital process, exact error rates by
enumeration, and the edge cases of ``score_range`` (API, markers, declarations)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pytest_forgetting import bounded
from pytest_forgetting.checks import parse_check
from pytest_forgetting.errors import ConfigError
from pytest_forgetting.stats import FAIL, INCONCLUSIVE, PASS, compare_scores

ALPHA = 0.05


# ------------------------------------------------------------------------------------------
# reference: the averaged hedged capital, written out step by step from the formulas
# ------------------------------------------------------------------------------------------


def _reference_log_capital(x: list[float], m: float, m0: float, alpha: float, upward: bool) -> float:
    """log of 0.9 K_aGRAPA + 0.1 K_plug-in for one order (Waudby-Smith and Ramdas 2023, sections
    4-5): running mean mu_t = (1/2 + sum x) / (t + 1), variance (1/4 + sum (x_i - mu_i)^2) / (t + 1),
    bets from t - 1 only, truncated at 1/2 of the largest safe bet."""
    mu, var, s, ss = 0.5, 0.25, 0.0, 0.0
    k_aim = k_plug = 1.0
    for t, xt in enumerate(x, start=1):
        gap = mu - m0
        aim = (max(gap, 0.0) if upward else max(-gap, 0.0)) / (var + gap * gap)
        plug = math.sqrt(2.0 * math.log(1.0 / (0.1 * alpha)) / (var * t * math.log(1.0 + t)))
        room = m if upward else 1.0 - m
        cap = 0.5 / room if room > 0.0 else math.inf
        move = (xt - m) if upward else (m - xt)
        k_aim *= 1.0 + min(aim, cap) * move
        k_plug *= 1.0 + min(plug, cap) * move
        s += xt
        mu = (0.5 + s) / (t + 1.0)
        ss += (xt - mu) ** 2
        var = (0.25 + ss) / (t + 1.0)
    return math.log(0.9 * k_aim + 0.1 * k_plug)


def _reference_upper(d: np.ndarray, bound: float, margin: float, alpha: float, seed: int) -> float:
    """inf {m : mean over the seeded orders of K-(m) >= 1/alpha}, by bisection on the drop scale."""
    n = d.size
    orders = max(1, min(bounded.ORDERS, 2_000_000 // n))
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(orders)]
    x = (d + bound) / (2.0 * bound)
    m0 = (margin + bound) / (2.0 * bound)

    def rejects(m: float) -> bool:
        caps = [math.exp(_reference_log_capital(x[p].tolist(), m, m0, alpha, False)) for p in perms]
        return sum(caps) / len(caps) >= 1.0 / alpha

    lo, hi = 0.0, 1.0  # K-(m) grows with m: rejected set [U, 1]
    if not rejects(hi):
        return bound
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if rejects(mid):
            hi = mid
        else:
            lo = mid
    return hi * 2.0 * bound - bound


@pytest.mark.parametrize("n, seed", [(30, 0), (200, 1)])
def test_upper_bound_matches_the_reference(n, seed):
    rng = np.random.default_rng(seed)
    d = np.clip(rng.normal(-0.05, 0.2, size=n), -1.0, 1.0)
    _, high = bounded.mean_bounds(d, bound=1.0, margin=0.05, alpha=ALPHA, fail_alpha=ALPHA, seed=seed)
    ref = _reference_upper(d, 1.0, 0.05, ALPHA, seed)
    assert high == pytest.approx(ref, abs=1e-8)
    assert high >= ref - 1e-12  # the root finder stays on the valid side
    # the lower bound is the mirror image: minus the upper bound of -d (bets aimed at -margin)
    low, _ = bounded.mean_bounds(d, bound=1.0, margin=0.05, alpha=ALPHA, fail_alpha=ALPHA, seed=seed)
    assert low == pytest.approx(-_reference_upper(-d, 1.0, -0.05, ALPHA, seed), abs=1e-8)
    assert low < d.mean() < high


def test_exact_false_pass_rate_of_the_extreme_two_point_distribution():
    """Differences only at the ends of [-1, 1] with the mean exactly at the margin (0.5): every one
    of the 2^12 samples enumerated, weighted by its probability; the PASS rate is <= alpha exactly,
    and not trivially 0."""
    n, margin = 12, 0.5
    p_plus = (1.0 + margin) / 2.0
    m0 = (margin + 1.0) / 2.0
    total = 0.0
    for signs in itertools.product((1.0, -1.0), repeat=n):
        d = np.array(signs)
        k = int(np.count_nonzero(d > 0))
        if bounded._Capital(d, 1.0, margin, ALPHA, 0).excess(m0, False) > 0.0:
            total += p_plus**k * (1.0 - p_plus) ** (n - k)
    assert 0.0 < total <= ALPHA


# ------------------------------------------------------------------------------------------
# compare_scores(score_range=...)
# ------------------------------------------------------------------------------------------


def test_betting_path_verdicts_and_fields():
    rng = np.random.default_rng(3)
    n = 2000
    base = rng.uniform(0.2, 0.8, size=n)
    tuned = np.clip(base + rng.normal(0.0, 0.05, size=n), 0.0, 1.0)
    res = compare_scores(base, tuned, max_drop=0.02, score_range=(0.0, 1.0))
    assert res.verdict == PASS and res.method == "betting"
    assert res.ci_low < res.drop < res.ci_high < 0.02
    worse = compare_scores(base, np.clip(tuned - 0.1, 0.0, 1.0), max_drop=0.02, score_range=(0, 1))
    assert worse.verdict == FAIL and worse.ci_low > 0.02
    # a wider declared range is more conservative, never less
    wide = compare_scores(base, tuned, max_drop=0.02, score_range=(-1.0, 2.0))
    assert wide.ci_high >= res.ci_high
    # the fail_alpha side is the lower bound at fail_alpha
    split = compare_scores(base, tuned, max_drop=0.02, score_range=(0.0, 1.0), fail_alpha=0.01)
    assert split.ci_high == res.ci_high and split.ci_low < res.ci_low


def test_betting_path_relative():
    rng = np.random.default_rng(4)
    n = 1500
    base = rng.uniform(0.3, 0.9, size=n)
    tuned = np.clip(base * rng.uniform(0.95, 1.05, size=n), 0.0, 1.0)
    res = compare_scores(base, tuned, max_drop=0.05, relative=True, score_range=(0.0, 1.0))
    assert res.verdict == PASS and res.method == "betting" and res.ci_high < 0.05
    assert res.drop == pytest.approx((base.mean() - tuned.mean()) / base.mean())
    # the same drop on scores in [-1, 0] (negated) is decided the same way
    neg = compare_scores(-base, -tuned, max_drop=0.05, relative=True, higher_is_better=False, score_range=(-1.0, 0.0))
    assert neg.verdict == PASS and neg.drop == pytest.approx(res.drop)
    with pytest.raises(ValueError, match="one side of 0"):
        compare_scores(base - 0.5, tuned - 0.5, max_drop=0.05, relative=True, score_range=(-1.0, 1.0))


def test_no_change_with_a_range_is_the_exact_rule():
    s = np.linspace(0.0, 2.0, 400)
    res = compare_scores(s, s, max_drop=0.02, higher_is_better=False, score_range=(0.0, 2.0))
    assert res.method == "exact-no-change" and res.verdict == PASS
    assert res.ci_high == pytest.approx(2.0 * (1.0 - ALPHA ** (1 / 400)))
    small = compare_scores(s[:100], s[:100], max_drop=0.02, score_range=(0.0, 2.0))
    assert small.verdict == INCONCLUSIVE and small.n_needed > 100


def test_a_range_decides_where_the_bootstrap_is_refused():
    """No range: below the floor the answer is INCONCLUSIVE and says what to do; with one, the same
    small sample is decided (here it is clearly fine)."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.1, 0.5, size=400)
    tuned = base + rng.uniform(-0.02, 0.02, size=400)
    plain = compare_scores(base, tuned, max_drop=0.1, higher_is_better=False)
    assert plain.verdict == INCONCLUSIVE and "score_range=(low, high)" in plain.reason
    ranged = compare_scores(base, tuned, max_drop=0.1, higher_is_better=False, score_range=(0.0, 1.0))
    assert ranged.verdict == PASS


def test_margin_beyond_the_range():
    base = np.full(50, 0.5)
    tuned = np.linspace(0.0, 1.0, 50)
    assert compare_scores(base, tuned, max_drop=1.5, score_range=(0.0, 1.0)).verdict == PASS
    assert compare_scores(base, tuned, max_drop=-1.5, score_range=(0.0, 1.0)).verdict == FAIL


def test_binary_scores_with_a_range_use_the_range():
    """A declared range wider than {0, 1} says the population may hold other values: no Tango."""
    base = np.r_[np.ones(150), np.zeros(50)]
    assert compare_scores(base, base.copy(), max_drop=0.05, score_range=(0.0, 2.0)).method == "exact-no-change"
    assert compare_scores(base, base.copy(), max_drop=0.05).method == "tango"


@pytest.mark.parametrize(
    "score_range, match",
    [
        ((0.0, math.inf), "finite"),
        ((-math.inf, 1.0), "finite"),
        ((math.nan, 1.0), "NaN"),
        ((1.0, 1.0), "low < high"),
        ((2.0, 1.0), "low < high"),
        ((0.0,), "pair"),
        ("01", "pair"),
        (5, "pair"),
        (("a", 1), "pair"),
        ((-1e308, 1e308), "too wide"),
    ],
)
def test_bad_score_ranges(score_range, match):
    with pytest.raises(ValueError, match=match):
        compare_scores(np.zeros(5), np.zeros(5), max_drop=0.1, score_range=score_range)


def test_scores_outside_the_range_are_one_clear_error():
    with pytest.raises(
        ValueError,
        match=r"tuned scores fall outside the declared score_range \(0, 1\): "
        r"2 value\(s\), first 1.5 at index 1$",
    ):
        compare_scores(np.zeros(4), np.array([0.0, 1.5, 0.2, -0.1]), max_drop=0.1, score_range=(0, 1))
    with pytest.raises(ValueError, match="base scores fall outside"):
        compare_scores(np.array([2.0, 0.0]), np.zeros(2), max_drop=0.1, score_range=(0, 1))
    with pytest.raises(ValueError, match="non-finite"):
        compare_scores(np.array([math.nan, 0.0]), np.zeros(2), max_drop=0.1, score_range=(0, 1))


# ------------------------------------------------------------------------------------------
# markers and declarations
# ------------------------------------------------------------------------------------------


def test_marker_score_range_is_validated_at_collection():
    check = parse_check("retains", {"task": "digits", "max_drop": 0.02, "score_range": (0, 2)}, "here")
    assert check.score_range == (0.0, 2.0)
    assert parse_check("improves", {"task": "digits", "min_gain": 0.02, "score_range": [0, 1]}, "here").score_range == (
        0.0,
        1.0,
    )
    assert parse_check("retains", {"task": "digits", "max_drop": 0.02}, "here").score_range is None
    for bad, match in (((0, math.inf), "finite"), ((1, 1), "low < high"), (3, "pair"), ((True, 2), "pair")):
        with pytest.raises(ConfigError, match=match) as info:
            parse_check("retains", {"task": "digits", "max_drop": 0.02, "score_range": bad}, "test_x.py::t")
        assert str(info.value).startswith("test_x.py::t: ") and "\n" not in str(info.value)


def test_declared_check_in_pyproject_carries_its_range(tmp_path):
    from pytest_forgetting.declarations import load_pyproject

    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[tool.pytest_forgetting]\nretains = [{ task = "digits", max_drop = 0.02, score_range = [0, 2] }]\n'
    )
    (decl,) = load_pyproject(path)
    assert parse_check(decl.kind, decl.kwargs, decl.where).score_range == (0.0, 2.0)


def test_score_range_on_an_aggregate_metric_is_a_usage_error():
    from pytest_forgetting.checks import bind_task
    from pytest_forgetting.metrics import PERPLEXITY

    class FakeTask:
        default_metric = "perplexity"

        def check_metric(self, name):
            return PERPLEXITY

        def check_split(self, split):
            return None

    check = parse_check(
        "retains",
        {"task": "digits", "max_drop": 0.1, "metric": "perplexity", "relative": True, "score_range": (0, 20)},
        "here",
    )
    with pytest.raises(ConfigError, match="score_range applies to per-example metrics"):
        bind_task(check, "here", FakeTask())


def test_brier_has_its_natural_range():
    from pytest_forgetting.proba_metrics import BRIER

    assert BRIER.score_range == (0.0, 2.0)
