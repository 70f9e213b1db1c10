"""Large-n paths of the decision core (issue 18, point 2): the analytic studentised interval that
replaces the per-example bootstrap-t from ``stats._ANALYTIC_MIN_N`` examples, entity F1 through the
Ratio machinery, the cheap group detection, and class_drops computing only the bounds it needs."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from pytest_forgetting import stats
from pytest_forgetting.metrics import PERPLEXITY, ratio_of


def _quantiles_analytic(sm: stats._SmoothMean, qs: list[float]) -> np.ndarray:
    _, _, k12, k31, _ = stats._edgeworth_terms(sm)
    z = np.array([NormalDist().inv_cdf(q) for q in qs])
    return z + (k12 + k31 * (z * z - 1.0) / 6.0) / math.sqrt(sm.z.shape[0])


def _t_quantiles(drop: float, se: float, reps: np.ndarray, reps_se: np.ndarray, qs: list[float]) -> np.ndarray:
    return np.quantile((reps - drop) / reps_se, qs)


def test_plain_mean_terms_are_students_t_skewness_correction():
    """For a mean (g = identity, H = 0) the expansion is the textbook one of Student's t:
    mean of T = -gamma / 2, third cumulant -2 gamma (Hall 1992, eq. 2.x; Johnson 1978)."""
    rng = np.random.default_rng(0)
    d = rng.exponential(1.0, 5000) - 0.9
    value, sigma, k12, k31, second = stats._edgeworth_terms(stats._mean_smooth(np.zeros_like(d), d, False))
    c = d - d.mean()
    gamma = np.mean(c**3) / np.mean(c**2) ** 1.5
    assert value == pytest.approx(d.mean(), rel=1e-12)
    assert sigma == pytest.approx(d.std(), rel=1e-12)
    assert k12 == pytest.approx(-gamma / 2.0, rel=1e-9)
    assert k31 == pytest.approx(-2.0 * gamma, rel=1e-9)
    kurt = np.mean(c**4) / np.mean(c**2) ** 2 - 3.0
    assert second == pytest.approx((gamma**2 + abs(kurt)) / d.size, rel=1e-9)


def test_numerical_hessian_matches_the_analytic_one_of_a_relative_mean():
    """g(mb, md) = md / |mb|: H = [[2 md / |mb|^3 (mb > 0), -1 / mb^2], [-1 / mb^2, 0]]; the terms
    built from the central-difference Hessian equal those from the analytic one."""
    rng = np.random.default_rng(1)
    b = 2.0 + rng.exponential(1.0, 4000)
    d = 0.3 * b + rng.normal(0, 0.5, 4000)
    sm = stats._mean_smooth(b, d, True)
    mb, md = b.mean(), d.mean()
    hess = np.array([[2 * md / mb**3, -1 / mb**2], [-1 / mb**2, 0.0]])
    z = sm.z - sm.z.mean(axis=0)
    cov = z.T @ z / z.shape[0]
    a = sm.grad(sm.z.mean(axis=0))[1]
    psi = z @ a
    sigma = math.sqrt(np.mean(psi**2))
    m3 = np.mean(psi**3)
    q = (cov @ a) @ hess @ (cov @ a)
    k12 = np.sum(hess * cov) / (2 * sigma) - (m3 + 2 * q) / (2 * sigma**3)
    k31 = -(2 * m3 + 3 * q) / sigma**3
    _, s_got, k12_got, k31_got, _ = stats._edgeworth_terms(sm)
    assert s_got == pytest.approx(sigma, rel=1e-12)
    assert k12_got == pytest.approx(k12, rel=1e-6)
    assert k31_got == pytest.approx(k31, rel=1e-6)


def _perplexity_like(n: int, seed: int, skew: float = 1.0):
    rng = np.random.default_rng(seed)
    ntok = (2 + rng.poisson(3, n) * rng.integers(1, 20, n)).astype(float)
    mu = 3.0 + rng.exponential(skew, n)
    return ntok, ntok * mu, ntok * (mu + 0.05 + rng.exponential(0.5, n) - 0.5)


@pytest.mark.parametrize("transform,relative", [("exp", True), ("identity", False), ("exp", False)])
def test_analytic_quantiles_track_the_bootstrap_t_where_the_skewness_shows(transform, relative):
    """At n = 1,500 with skewed inputs, the studentised statistic's quantiles from 40,000 resamples sit
    away from the normal ones by up to ~0.2; the expansion's quantiles follow them: their distance to
    the bootstrap's is under 30 % of the bootstrap's distance to the normal quantiles (what is left:
    the O(1/n) terms and the Monte-Carlo error)."""
    n = 1500
    ntok, nb, nt = _perplexity_like(n, 1)
    parts = stats._RatioParts(stats.Ratio(nb, ntok, nt, ntok, transform=transform, den_fixed=True), n)
    assert parts.sizes is None
    drop, se = (float(v[0]) for v in parts.drop_and_se(parts.full_weights(), relative, False))
    qs = [0.025, 0.05, 0.95, 0.975]
    boot = _t_quantiles(drop, se, *parts.replicates(relative, False, 40_000, 3), qs)
    sm = parts.smooth(relative, False)
    assert sm.grad(sm.z.mean(axis=0))[0] == pytest.approx(drop, rel=1e-9)
    analytic = _quantiles_analytic(sm, qs)
    normal = np.array([NormalDist().inv_cdf(q) for q in qs])
    assert np.abs(boot - normal).max() > 0.08  # the skewness is visible here
    assert np.abs(analytic - boot).sum() <= 0.3 * np.abs(boot - normal).sum(), (boot, analytic, normal)


@pytest.mark.parametrize("relative", [False, True])
def test_analytic_quantiles_track_the_bootstrap_t_of_continuous_means(relative):
    n = 1500
    rng = np.random.default_rng(5)
    b = rng.exponential(1.0, n) + 0.2
    t = b * rng.lognormal(0, 0.5, n)
    diff = t - b
    replicates, smooth = stats._moment_plan(b, t, diff, relative, False, 40_000, 5)
    sm = smooth()
    drop = sm.grad(sm.z.mean(axis=0))[0]
    if relative:
        mb, r = b.mean(), diff.mean() / abs(b.mean())
        se = (((diff - diff.mean()) - r * np.sign(mb) * (b - mb)) / abs(mb)).std(ddof=1) / math.sqrt(n)
    else:
        se = diff.std(ddof=1) / math.sqrt(n)
    qs = [0.025, 0.05, 0.95, 0.975]
    boot = _t_quantiles(drop, se, *replicates(), qs)
    analytic = _quantiles_analytic(sm, qs)
    normal = np.array([NormalDist().inv_cdf(q) for q in qs])
    assert np.abs(boot - normal).max() > 0.08  # the skewness is visible here
    assert np.abs(analytic - boot).sum() <= 0.3 * np.abs(boot - normal).sum(), (boot, analytic, normal)


def _cases(n: int, seed: int):
    rng = np.random.default_rng(seed)
    b = 3.0 + rng.normal(0, 0.5, n)
    t = b + 0.05 + rng.normal(0, 0.3, n) + 0.1 * (rng.exponential(1.0, n) - 1.0)
    ntok, nb, nt = _perplexity_like(n, seed)
    ob, ot = {"nll": nb, "ntok": ntok}, {"nll": nt, "ntok": ntok}
    common = dict(alpha=0.05, fail_alpha=0.025, seed=seed, higher_is_better=False)
    return {
        "mean absolute": lambda: stats.compare_scores(b, t, max_drop=0.06, **common),
        "mean relative": lambda: stats.compare_scores(b, t, max_drop=0.02, relative=True, **common),
        "perplexity relative": lambda: stats.compare_statistic(
            None, n, ratio=ratio_of(PERPLEXITY, ob, ot), max_drop=0.01, relative=True, **common
        ),
    }


@pytest.mark.parametrize("path", ["mean absolute", "mean relative", "perplexity relative"])
def test_large_n_bounds_equal_the_bootstrap_t_within_its_monte_carlo_error(monkeypatch, path):
    """Where both run (n = 20,000, the threshold lowered for the test): each bound within 0.2 SE of
    the bootstrap-t's (whose own Monte-Carlo error is ~0.05 SE), same drop and verdict."""
    n = 20_000
    decide = _cases(n, 11)[path]
    monkeypatch.setattr(stats.bootstrap, "_ANALYTIC_MIN_N", n)
    fast = decide()
    monkeypatch.setattr(stats.bootstrap, "_ANALYTIC_MIN_N", 10**12)
    slow = decide()
    assert fast.method == "edgeworth-t" and slow.method == "bootstrap-t"
    assert fast.drop == slow.drop and fast.base == slow.base and fast.tuned == slow.tuned
    se = (slow.ci_high - slow.ci_low) / (stats._z(0.05) + stats._z(0.025))
    assert abs(fast.ci_high - slow.ci_high) <= 0.2 * se
    assert abs(fast.ci_low - slow.ci_low) <= 0.2 * se
    assert fast.verdict == slow.verdict


def test_verdicts_agree_with_the_bootstrap_t_by_simulation(monkeypatch):
    """20 eval sets of n = 10,000 (threshold lowered for the test) with the true drop at the margin
    plus -2..2 SE: the analytic path and the bootstrap-t agree on at least 19 (a disagreement needs
    a bound within Monte-Carlo error of the margin); benchmarks/large_n_agreement.py runs more."""
    n = 10_000
    rng = np.random.default_rng(2024)
    agree = 0
    for i in range(20):
        shift = (i / 19.0 * 4.0 - 2.0) * 0.3 / math.sqrt(n)
        b = 3.0 + rng.normal(0, 0.5, n)
        t = b + 0.05 + shift + rng.normal(0, 0.3, n)
        monkeypatch.setattr(stats.bootstrap, "_ANALYTIC_MIN_N", n)
        fast = stats.compare_scores(b, t, max_drop=0.05, higher_is_better=False, seed=i, n_needed=False)
        monkeypatch.setattr(stats.bootstrap, "_ANALYTIC_MIN_N", 10**12)
        slow = stats.compare_scores(b, t, max_drop=0.05, higher_is_better=False, seed=i, n_needed=False)
        agree += fast.verdict == slow.verdict
    assert agree >= 19


def test_large_n_is_deterministic_and_ignores_the_seed():
    n = stats._ANALYTIC_MIN_N
    rng = np.random.default_rng(3)
    b = rng.normal(0, 1, n)
    t = b + rng.normal(0.01, 0.5, n)
    a = stats.compare_scores(b, t, max_drop=0.05, seed=0)
    assert a.method == "edgeworth-t"
    assert a == stats.compare_scores(b, t, max_drop=0.05, seed=0) == stats.compare_scores(b, t, max_drop=0.05, seed=9)
    below = stats.compare_scores(b[:-1], t[:-1], max_drop=0.05, seed=0)
    assert below.method == "bootstrap-t"


def test_very_skewed_scores_keep_the_bootstrap():
    """The expansion is refused when its correction is not small (lognormal sigma = 2.5 at
    n = 50,000: skewness in the thousands), so the bootstrap-t decides there."""
    rng = np.random.default_rng(4)
    n = 50_000
    d = rng.lognormal(0.0, 2.5, n)
    sm = stats._mean_smooth(np.zeros(n), d, False)
    se = d.std(ddof=1) / math.sqrt(n)
    assert stats._edgeworth_bounds(sm, float(d.mean()), se, 0.05, 0.05) is None
    mild = rng.normal(0, 1, n)
    assert (
        stats._edgeworth_bounds(
            stats._mean_smooth(np.zeros(n), mild, False),
            float(mild.mean()),
            mild.std(ddof=1) / math.sqrt(n),
            0.05,
            0.05,
        )
        is not None
    )


def test_repeated_scores_keep_the_multinomial_bootstrap_at_large_n():
    """Scores with few distinct values resample group counts (cheap at any n): no analytic path."""
    rng = np.random.default_rng(6)
    n = 60_000
    b = rng.integers(0, 5, n).astype(float) / 4.0
    t = np.clip(b + rng.choice([-0.25, 0.0, 0.25], n, p=[0.05, 0.9, 0.05]), 0, 1)
    res = stats.compare_scores(b, t, max_drop=0.05)
    assert res.method == "bootstrap-t"


def test_group_test_is_exact():
    """_too_many_groups says True only where _group_sizes would say None."""
    rng = np.random.default_rng(8)
    for n in (10, 100, 1000, 5000):
        for distinct in (1, 3, n // 10, n // 8, n // 8 + 1, n // 4, n):
            x = rng.integers(0, max(distinct, 1), n).astype(float)[:, None]
            y = (x * 2.0) % 3.0
            codes, first = stats._distinct_rows(x, y)
            if stats._too_many_groups(x, y):
                assert stats._group_sizes(codes, first.size, n) is None


def test_gram_matrix_built_only_when_resampling():
    n = 300
    ntok, nb, nt = _perplexity_like(n, 2)
    parts = stats._RatioParts(stats.Ratio(nb, ntok, nt, ntok, transform="exp", den_fixed=True), n)
    assert parts._gram is stats._UNSET
    parts.smooth(True, False)
    assert parts._gram is stats._UNSET
    assert parts.gram is not None


# -- entity F1 through Ratio ----------------------------------------------------------------


def _taggers(n: int, seed: int, words: int = 9):
    from pytest_forgetting.tasks.token import TagTable, entity_metrics

    table = TagTable.from_tags(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    rng = np.random.default_rng(seed)
    gold = rng.choice(5, size=(n, words), p=[0.6, 0.1, 0.1, 0.1, 0.1])
    pred_b = np.where(rng.random((n, words)) < 0.85, gold, rng.integers(0, 5, (n, words)))
    pred_t = np.where(rng.random((n, words)) < 0.1, rng.integers(0, 5, (n, words)), pred_b)
    pad = rng.random(n) < 0.3
    for arr in (gold, pred_b, pred_t):
        arr[pad, -2:] = -100
    metrics = entity_metrics(table)
    return metrics, {"tag_pred": pred_b, "tag_gold": gold}, {"tag_pred": pred_t, "tag_gold": gold}


@pytest.mark.parametrize("name", ["f1", "precision", "recall", "token_accuracy", "f1:PER", "f1:LOC"])
def test_entity_ratio_forms_equal_the_metric_on_every_subset(name):
    """Ratio value = sum num / sum den over any index multiset equals the task's own aggregate."""
    metrics, ob, ot = _taggers(400, 1)
    metric = metrics[name]
    ratio = ratio_of(metric, ob, ot)
    assert ratio is not None
    rng = np.random.default_rng(2)
    for idx in [np.arange(400), rng.integers(0, 400, 400), rng.integers(0, 400, 37), np.array([5, 5, 5])]:
        for o, num, den in ((ob, ratio.num_base, ratio.den_base), (ot, ratio.num_tuned, ratio.den_tuned)):
            d = float(np.sum(den[idx]))
            value = float(np.sum(num[idx])) / d if d > 0 else 0.0
            assert value == pytest.approx(metric.aggregate(o, idx), rel=1e-12, abs=1e-15)
    parts = stats._RatioParts(ratio, 400)
    assert parts.values() == pytest.approx((metric.value(ob), metric.value(ot)), rel=1e-12)


def test_entity_f1_decides_through_the_ratio_path_and_keeps_identical_taggers_inconclusive():
    metrics, ob, ot = _taggers(3000, 3)
    f1 = metrics["f1"]
    res = stats.compare_statistic(
        lambda idx: (f1.aggregate(ob, idx), f1.aggregate(ot, idx)),
        3000,
        ratio=ratio_of(f1, ob, ot),
        bounded=True,
        max_drop=0.05,
    )
    assert res.method == "bootstrap-t" and res.drop == pytest.approx(f1.value(ob) - f1.value(ot), rel=1e-12)
    assert ratio_of(f1, ob, ob) is None  # identical taggers: the black box (no spread: INCONCLUSIVE)
    same = stats.compare_statistic(
        lambda idx: (f1.aggregate(ob, idx), f1.aggregate(ob, idx)),
        3000,
        ratio=ratio_of(f1, ob, ob),
        bounded=True,
        max_drop=0.05,
    )
    assert same.verdict == stats.INCONCLUSIVE and same.drop == 0.0


def test_entity_ratio_of_nothing_falls_back_to_the_black_box():
    metrics, ob, ot = _taggers(50, 4)
    empty = {"tag_pred": np.zeros_like(ob["tag_pred"]), "tag_gold": ob["tag_gold"]}
    assert ratio_of(metrics["precision"], ob, empty) is None  # the tuned tagger predicts no entity


def test_entity_key_membership_equals_isin():
    from pytest_forgetting.tasks.token import _member

    rng = np.random.default_rng(9)
    for size in (0, 1, 5, 1000):
        pool = np.unique(rng.integers(0, 3000, size))
        keys = np.unique(rng.integers(0, 3000, 700))
        assert np.array_equal(_member(keys, pool), np.isin(keys, pool))
        assert np.array_equal(_member(keys, rng.permutation(pool)), np.isin(keys, pool))


# -- class_drops: only the bounds that are needed ------------------------------------------------


def test_class_drops_worst_keeps_the_worst_classes_with_the_same_bounds():
    rng = np.random.default_rng(10)
    for trial in range(30):
        n = int(rng.integers(50, 3000))
        k = int(rng.integers(1, 60))
        labels = rng.integers(0, k, n)
        bc = rng.random(n) < 0.8
        tc = np.where(rng.random(n) < rng.random() * 0.3, ~bc, bc)
        if trial % 4 == 0:
            tc = bc.copy()  # every drop 0: ties everywhere, the lower bounds order them
        full = stats.class_drops(bc.astype(float), tc.astype(float), labels, limit=0.1, fail_alpha=0.025)
        for worst in (1, 3, 100):
            top = stats.class_drops(
                bc.astype(float), tc.astype(float), labels, limit=0.1, fail_alpha=0.025, worst=worst
            )
            assert top == full[:worst]
    with pytest.raises(ValueError, match="worst"):
        stats.class_drops([1, 0], [1, 1], [0, 1], limit=0.1, worst=0)


def test_class_drops_thousand_classes_fast():
    """1,000 classes at n = 1e5 (the scaling benchmark's case): all bounds in well under 50 ms of CPU
    on an idle machine; here a generous limit for a shared one, and worst=3 a fraction of it."""
    import time

    rng = np.random.default_rng(12345)
    n, k = 100_000, 1000
    labels = rng.integers(0, k, size=n)
    b = rng.random(n) < 0.8
    t = np.where(rng.random(n) < 0.05, ~b, b)
    stats.class_drops(b.astype(float), t.astype(float), labels, limit=0.1)
    start = time.process_time()
    stats.class_drops(b.astype(float), t.astype(float), labels, limit=0.1)
    full = time.process_time() - start
    start = time.process_time()
    stats.class_drops(b.astype(float), t.astype(float), labels, limit=0.1, worst=3)
    top = time.process_time() - start
    assert full < 0.2
    assert top < full


def test_macro_ratio_forms_equal_the_one_hot_products():
    """metrics._f1_macro_ratio / _balanced_accuracy_ratio, built by index assignment (no one-hot
    temporaries), equal the one-hot formulas they replace."""
    from pytest_forgetting import metrics

    rng = np.random.default_rng(0)
    for k in (1, 2, 5, 13):
        y = rng.integers(0, k, 3000)
        p = np.where(rng.random(3000) < 0.7, y, rng.integers(0, k, 3000))
        o = {"label": y, "pred": p}
        kk = k + 2
        oy, op = np.eye(kk)[y], np.eye(kk)[p]
        num, den = metrics._f1_macro_ratio(o, kk)
        assert np.array_equal(num, 2.0 * oy * op) and np.array_equal(den, oy + op)
        num, den = metrics._balanced_accuracy_ratio(o, kk)
        assert np.array_equal(num, oy * (y == p)[:, None]) and np.array_equal(den, oy)


def test_class_drops_integer_labels_by_bincount_equal_the_sorted_path():
    """Small non-negative integer labels take classes and codes from one bincount; the budgets (names,
    order, bounds, verdicts) equal those of the np.unique path (the same labels as floats), names too."""
    rng = np.random.default_rng(11)
    for dt in (np.int64, np.int32, np.uint8, np.int16):
        for hi in (1, 3, 50, 300):
            lab = rng.integers(0, hi, 2000).astype(dt)
            bc = rng.random(2000) < 0.8
            tc = np.where(rng.random(2000) < 0.1, ~bc, bc)
            got = stats.class_drops(
                bc.astype(float), tc.astype(float), lab, limit=0.1, class_names=[f"c{i}" for i in range(hi)]
            )
            ref = stats.class_drops(bc.astype(float), tc.astype(float), lab.astype(float), limit=0.1)
            assert [(g.value, g.ci_low, g.ci_high, g.verdict, g.n) for g in got] == [
                (r.value, r.ci_low, r.ci_high, r.verdict, r.n) for r in ref
            ]
            assert [g.name for g in got] == [f"c{int(float(r.name))}" for r in ref]
