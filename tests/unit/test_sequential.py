"""The sequential (early-stopping) decision: error rates by seeded simulation, power against the
previous method, reference values from an independent implementation, contract.

Simulations are vectorised (thousands of sequences at once) and seeded, so they are exact
regressions, not flaky: the tolerances only leave room for the simulation error of the
*claim*, never for a different random draw.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_forgetting.sequential import (
    MARGIN_WEIGHT,
    MAX_BET,
    chunk_looks,
    confidence_bounds,
    log_capital,
    sequential_decide,
    settle,
)

ALPHA = 0.05


def paired_flips(rng: np.random.Generator, shape: tuple[int, ...], neg: float, pos: float) -> np.ndarray:
    """Per-example drops of 0/1 correctness: +1 (base right, tuned wrong) with probability ``neg``,
    -1 with probability ``pos``, else 0 (the models agree). The true mean drop is neg - pos."""
    u = rng.random(shape)
    return np.where(u < neg, 1.0, np.where(u < neg + pos, -1.0, 0.0))


def stop_rates(drops: np.ndarray, margin: float, looks: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """(share of sequences that PASS, share that FAIL, fraction of examples used per sequence)."""
    n = drops.shape[-1]
    looks = np.arange(1, n + 1) if looks is None else np.asarray(looks)
    first, code = settle(drops, margin=margin, looks=looks, alpha=ALPHA)
    used = np.where(first >= 0, looks[np.maximum(first, 0)], n) / n
    return float(np.mean(code == 1)), float(np.mean(code == -1)), used


def tolerance(p: float, reps: int) -> float:
    return p + 3 * math.sqrt(p * (1 - p) / reps)


# -- the previous method, kept here as the yardstick for power -----------------------------------
def old_eb_bounds(drops: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The predictable plug-in empirical-Bernstein confidence sequence (Waudby-Smith & Ramdas 2023,
    Theorem 2, bet cap 1/2, running intersection) that decided early stopping before the betting
    sequence replaced it; drops in [-1, 1], shape (..., n)."""
    x = (drops + 1.0) / 2.0
    n = x.shape[-1]
    t = np.arange(1, n + 1, dtype=float)
    lead = x.shape[:-1] + (1,)
    mu = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)
    mu_prev = np.concatenate([np.full(lead, 0.5), mu[..., :-1]], axis=-1)
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=-1)) / (t + 1)
    var_prev = np.concatenate([np.full(lead, 0.25), var[..., :-1]], axis=-1)
    log_term = math.log(1 / alpha)
    lam = np.minimum(np.sqrt(2 * log_term / (var_prev * t * np.log1p(t))), 0.5)
    psi = (-np.log1p(-lam) - lam) / 4
    lam_sum = np.cumsum(lam, axis=-1)
    centre = np.cumsum(lam * x, axis=-1) / lam_sum
    width = (log_term + np.cumsum(4 * (x - mu_prev) ** 2 * psi, axis=-1)) / lam_sum
    lower = np.maximum.accumulate(np.clip(centre - width, 0, 1), axis=-1)
    upper = np.minimum.accumulate(np.clip(centre + width, 0, 1), axis=-1)
    return 2 * lower - 1, 2 * upper - 1


def old_stop_rates(drops: np.ndarray, margin: float) -> tuple[float, float, np.ndarray]:
    n = drops.shape[-1]
    lo, hi = old_eb_bounds(drops)
    looks = np.arange(20, n + 1)
    passed, failed = hi[..., looks - 1] < margin, lo[..., looks - 1] > margin
    settled = passed | failed
    first = np.where(settled.any(-1), settled.argmax(-1), -1)
    code = np.where(
        first < 0, 0, np.where(np.take_along_axis(passed, np.maximum(first, 0)[..., None], -1)[..., 0], 1, -1)
    )
    used = np.where(first >= 0, looks[np.maximum(first, 0)], n) / n
    return float(np.mean(code == 1)), float(np.mean(code == -1)), used


# -- an independent, straightforward implementation: one example at a time, plain floats ---------
def reference_capitals(
    drops: list[float], margin: float, m: float, alpha: float = ALPHA, bound: float = 1.0
) -> list[tuple[float, float]]:
    """(K+, K-) at the candidate mean ``m`` (on the [0, 1] scale) after each example, betting as the
    module documents: weight MARGIN_WEIGHT on aGRAPA bets aimed at the margin, the rest on the
    predictable plug-in bets; each bet truncated at MAX_BET / m (K+) or MAX_BET / (1 - m) (K-)."""
    m0 = (margin + bound) / (2 * bound)
    c = MAX_BET
    plug_level = math.log(1 / ((1 - MARGIN_WEIGHT) * alpha))
    mean_prev, var_prev, total, squares = 0.5, 0.25, 0.0, 0.0
    grow_up = grow_down = flat_up = flat_down = 1.0
    out = []
    for t, d in enumerate(drops, start=1):
        x = (d + bound) / (2 * bound)
        gap = mean_prev - m0
        bet_up = max(gap, 0.0) / (var_prev + gap * gap)
        bet_down = max(-gap, 0.0) / (var_prev + gap * gap)
        bet_plug = math.sqrt(2 * plug_level / (var_prev * t * math.log(1 + t)))
        grow_up *= 1 + min(bet_up, c / m) * (x - m)
        flat_up *= 1 + min(bet_plug, c / m) * (x - m)
        grow_down *= 1 - min(bet_down, c / (1 - m)) * (x - m)
        flat_down *= 1 - min(bet_plug, c / (1 - m)) * (x - m)
        out.append(
            (
                MARGIN_WEIGHT * grow_up + (1 - MARGIN_WEIGHT) * flat_up,
                MARGIN_WEIGHT * grow_down + (1 - MARGIN_WEIGHT) * flat_down,
            )
        )
        total += x
        mean = (0.5 + total) / (t + 1)
        squares += (x - mean) ** 2
        mean_prev, var_prev = mean, (0.25 + squares) / (t + 1)
    return out


def reference_bounds(drops: list[float], margin: float, alpha: float = ALPHA) -> tuple[float, float]:
    """Bounds after all of ``drops`` (no intersection over time), by plain bisection on m."""
    level = 1 / alpha

    def k_up(m: float) -> float:
        return reference_capitals(drops, margin, m, alpha)[-1][0]

    def k_down(m: float) -> float:
        return reference_capitals(drops, margin, m, alpha)[-1][1]

    lo, hi = 0.0, 1.0  # K+ decreases in m
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if k_up(mid) >= level else (lo, mid)
    lower = lo
    lo, hi = 0.0, 1.0  # K- increases in m
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if k_down(mid) >= level else (mid, hi)
    return 2 * lower - 1, 2 * hi - 1


# -- error rates ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("neg", "pos"),
    [(0.03, 0.01), (0.08, 0.03), (0.25, 0.20), (0.02, 0.04)],
    ids=["rare-flips", "few-flips", "many-flips", "improves"],
)
def test_false_pass_and_fail_rates_at_the_margin_stay_below_alpha(neg, pos):
    """True drop exactly at the margin, looking after every example: PASS and FAIL are both errors."""
    reps, n, margin = 2000, 1000, neg - pos
    drops = paired_flips(np.random.default_rng(11), (reps, n), neg, pos)
    passed, failed, _ = stop_rates(drops, margin)
    assert passed <= tolerance(ALPHA, reps)
    assert failed <= tolerance(ALPHA, reps)


def test_error_rates_with_chunked_looks_and_a_long_set():
    reps, n, neg, pos = 400, 5000, 0.12, 0.10
    drops = paired_flips(np.random.default_rng(12), (reps, n), neg, pos)
    passed, failed, _ = stop_rates(drops, neg - pos, looks=np.asarray(chunk_looks(n, 250)))
    assert passed <= tolerance(ALPHA, reps) and failed <= tolerance(ALPHA, reps)


def test_peeking_with_a_fixed_n_interval_would_not_be_valid():
    """The contrast that makes the procedure necessary: a one-sided Wald bound checked after every
    example passes far more often than alpha at a true drop equal to the margin."""
    reps, n, neg, pos = 2000, 1000, 0.08, 0.03
    drops = paired_flips(np.random.default_rng(11), (reps, n), neg, pos)
    t = np.arange(1, n + 1)
    mean = np.cumsum(drops, axis=1) / t
    var = np.maximum(np.cumsum(drops**2, axis=1) / t - mean**2, 1e-12)
    upper = mean + 1.6449 * np.sqrt(var / t)
    naive = float(np.mean((upper[:, 19:] < neg - pos).any(axis=1)))
    passed, _, _ = stop_rates(drops, neg - pos)
    assert naive > 2 * ALPHA > passed


def test_false_rates_with_continuous_bounded_scores():
    """General scores in [0, 1] (not 0/1): tuned is worse by exactly the margin on average."""
    reps, n = 2000, 800
    rng = np.random.default_rng(5)
    base = rng.beta(4, 2, size=(reps, n))
    tuned = np.clip(base - 0.05 + rng.normal(0, 0.15, size=(reps, n)), 0, 1)
    drops = base - tuned
    true_drop = float(drops.mean())  # clipping to [0, 1] moves it a little off 0.05; 1.6M draws pin it down
    assert abs(true_drop - 0.05) < 0.01
    passed, failed, _ = stop_rates(drops, true_drop)
    assert passed <= tolerance(ALPHA, reps) and failed <= tolerance(ALPHA, reps)


def test_confidence_bounds_cover_the_mean_at_all_looks_at_once():
    """The reported bounds (not only the test at the margin) are a confidence sequence."""
    reps, n, neg, pos = 300, 600, 0.12, 0.04
    rng = np.random.default_rng(3)
    at = np.asarray(chunk_looks(n, 30))
    mu = neg - pos
    miss_low = miss_high = 0
    for _ in range(reps):
        lo, hi = confidence_bounds(paired_flips(rng, (n,), neg, pos), margin=0.05, at=at, alpha=ALPHA)
        miss_low += bool(lo[-1] > mu)  # running intersection: the last entry is the tightest
        miss_high += bool(hi[-1] < mu)
    assert miss_low / reps <= tolerance(ALPHA, reps) and miss_high / reps <= tolerance(ALPHA, reps)


# -- power against the previous empirical-Bernstein sequence --------------------------------------
def test_a_fine_model_settles_early_far_more_often_than_with_the_old_sequence():
    """The audit's case: true drop 0, 2 % of the answers changed (1 % each way), margin 0.02,
    500 examples. The fixed-n Tango test settles about 87 % of such sets; the empirical-Bernstein
    sequence about 14 %; the betting sequence more than four times as often."""
    reps, n = 2000, 500
    drops = paired_flips(np.random.default_rng(21), (reps, n), 0.01, 0.01)
    new_pass, new_fail, _ = stop_rates(drops, 0.02, looks=np.arange(20, n + 1))
    old_pass, old_fail, _ = old_stop_rates(drops, 0.02)
    assert new_fail == old_fail == 0.0
    assert old_pass < 0.2 and new_pass > 0.55 and new_pass > 3.5 * old_pass


def test_a_large_set_at_high_churn_is_settled_on_a_smaller_fraction():
    """10,000 examples, 20 % churn (10 % each way), true drop 0, margin 0.02."""
    reps, n = 300, 10_000
    drops = paired_flips(np.random.default_rng(22), (reps, n), 0.10, 0.10)
    new_pass, _, new_used = stop_rates(drops, 0.02, looks=np.arange(20, n + 1))
    old_pass, _, old_used = old_stop_rates(drops, 0.02)
    assert new_pass > old_pass + 0.1
    assert new_used.mean() < 0.5 < 0.55 < old_used.mean()


def test_regressions_are_found_sooner_than_with_the_old_sequence():
    reps, n = 1000, 2000
    drops = paired_flips(np.random.default_rng(23), (reps, n), 0.075, 0.025)  # drop 0.05, margin 0.02
    _, new_fail, new_used = stop_rates(drops, 0.02, looks=np.arange(20, n + 1))
    _, old_fail, old_used = old_stop_rates(drops, 0.02)
    assert new_fail > old_fail and new_used.mean() < old_used.mean()


# -- reference values ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("neg", "pos", "margin"), [(0.08, 0.03, 0.02), (0.01, 0.01, 0.02), (0.3, 0.1, 0.1), (0.05, 0.10, -0.03)]
)
def test_capital_matches_an_independent_implementation(neg, pos, margin):
    drops = paired_flips(np.random.default_rng(31), (400,), neg, pos)
    log_fail, log_pass = log_capital(drops, margin=margin, alpha=ALPHA)
    ref = reference_capitals(drops.tolist(), margin, (margin + 1) / 2)
    assert np.allclose(log_fail, [math.log(k) for k, _ in ref], rtol=1e-10, atol=1e-10)
    assert np.allclose(log_pass, [math.log(k) for _, k in ref], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("neg", "pos", "margin", "n"),
    [(0.08, 0.03, 0.02, 300), (0.0, 0.0, 0.02, 250), (0.3, 0.1, 0.1, 120), (0.5, 0.4, 0.0, 60)],
)
def test_bounds_match_an_independent_implementation(neg, pos, margin, n):
    drops = paired_flips(np.random.default_rng(32), (n,), neg, pos)
    lo, hi = confidence_bounds(drops, margin=margin, at=[n], alpha=ALPHA, intersect=False)
    ref_lo, ref_hi = reference_bounds(drops.tolist(), margin)
    assert lo[0] == pytest.approx(ref_lo, abs=1e-8) and hi[0] == pytest.approx(ref_hi, abs=1e-8)
    assert lo[0] <= ref_lo + 1e-12 and hi[0] >= ref_hi - 1e-12  # never on the invalid side


def test_identical_models_pass_after_a_number_of_examples_known_in_closed_form():
    """No flips at all: x = 1/2 every time, the running mean stays 1/2 and the variance estimate is
    1/(4 (t + 1)), so the aGRAPA bet before example t is g / (1/(4t) + g^2) with g = margin / 2,
    capped at c / (1 - m0); the plug-in component is computed the same way. PASS at the first t
    where 0.9 K_aim + 0.1 K_plug exceeds 1/alpha."""
    margin = 0.02
    m0 = (1 + margin) / 2
    g = m0 - 0.5
    aim = plug = 1.0
    expected = None
    for t in range(1, 2000):
        var_prev = 0.25 / t
        aim *= 1 + min(g / (var_prev + g * g), MAX_BET / (1 - m0)) * g
        bet = math.sqrt(2 * math.log(1 / (0.1 * ALPHA)) / (var_prev * t * math.log(1 + t)))
        plug *= 1 + min(bet, MAX_BET / (1 - m0)) * g
        if 0.9 * aim + 0.1 * plug > 1 / ALPHA and expected is None:
            expected = t
    res = sequential_decide(np.ones(1000), np.ones(1000), max_drop=margin, alpha=ALPHA, min_n=1)
    assert res.verdict == "pass" and res.n_used == expected
    assert 150 < expected < 400  # the fixed-n Tango test needs about 149 identical examples


def test_verdicts_agree_with_the_reported_bounds():
    rng = np.random.default_rng(33)
    for neg, pos in [(0.08, 0.03), (0.15, 0.02), (0.02, 0.02), (0.05, 0.05)]:
        base = (rng.random(1500) < 0.85).astype(float)
        d = paired_flips(rng, (1500,), neg, pos)
        tuned = base - d  # may leave [0, 1]; clip and recompute, only the pairing matters here
        tuned = np.clip(tuned, 0, 1)
        res = sequential_decide(base, tuned, max_drop=0.03, looks=chunk_looks(1500, 50))
        for look in res.looks[:-1]:
            assert look.lower <= 0.03 <= look.upper  # not settled before the stopping look
        if res.verdict == "pass":
            assert res.ci_high < 0.03
        elif res.verdict == "fail":
            assert res.ci_low > 0.03
        else:
            assert res.ci_low <= 0.03 <= res.ci_high


# -- savings -------------------------------------------------------------------------------------
def test_clear_pass_and_clear_regression_use_well_under_half_the_set():
    reps, n, margin = 400, 2000, 0.05
    rng = np.random.default_rng(7)
    passed, _, used_pass = stop_rates(paired_flips(rng, (reps, n), 0.03, 0.03), margin)
    _, failed, used_fail = stop_rates(paired_flips(rng, (reps, n), 0.17, 0.02), margin)
    assert passed == 1.0 and failed == 1.0
    assert np.median(used_pass) < 0.5 and np.median(used_fail) < 0.5
    assert np.quantile(used_pass, 0.9) < 0.5 and np.quantile(used_fail, 0.9) < 0.5


def test_sequential_decide_on_one_seeded_eval_set():
    rng = np.random.default_rng(0)
    n = 2000
    base = (rng.random(n) < 0.92).astype(float)
    same = base.copy()  # a fine-tune that changes 60 answers each way: drop exactly 0
    same[rng.choice(np.flatnonzero(base == 1), 60, replace=False)] = 0
    same[rng.choice(np.flatnonzero(base == 0), 60, replace=False)] = 1
    res = sequential_decide(base, same, max_drop=0.05, alpha=ALPHA)
    assert res.verdict == "pass" and res.settled and res.done
    assert res.fraction_used < 0.5 and res.ci_high < 0.05
    worse = base.copy()
    worse[(base == 1) & (rng.random(n) < 0.16)] = 0  # loses ~15 points
    res = sequential_decide(base, worse, max_drop=0.05, alpha=ALPHA)
    assert res.verdict == "fail" and res.fraction_used < 0.5 and res.ci_low > 0.05
    assert res.looks[-1].n == res.n_used and res.looks[-1].lower == res.ci_low


# -- contract ------------------------------------------------------------------------------------
def test_stops_only_at_the_given_looks_and_is_consistent_chunk_by_chunk():
    rng = np.random.default_rng(1)
    n, chunk = 1500, 64
    base = (rng.random(n) < 0.9).astype(float)
    tuned = base.copy()
    tuned[(base == 1) & (rng.random(n) < 0.2)] = 0
    looks = chunk_looks(n, chunk)
    full = sequential_decide(base, tuned, max_drop=0.05, looks=looks)
    assert full.verdict == "fail" and full.n_used % chunk == 0
    # the session's loop: evaluate a chunk, ask, stop when done
    seen = 0
    while True:
        seen = min(seen + chunk, n)
        step = sequential_decide(base, tuned[:seen], max_drop=0.05, looks=looks)
        if step.done:
            break
        assert step.verdict == "inconclusive" and not step.settled and step.n_used == seen
    assert (step.verdict, step.n_used, step.ci_low, step.ci_high) == (
        full.verdict,
        full.n_used,
        full.ci_low,
        full.ci_high,
    )
    assert seen == full.n_used


def test_exhausted_set_is_inconclusive_and_done():
    base = np.ones(300)
    tuned = base.copy()
    tuned[::25] = 0  # a drop of 0.04, spread evenly: 300 examples cannot tell it from the 0.05 margin
    res = sequential_decide(base, tuned, max_drop=0.05, looks=[100, 200])
    assert res.verdict == "inconclusive" and res.done and not res.settled
    assert res.n_used == 300 and res.fraction_used == 1.0
    assert [k.n for k in res.looks] == [100, 200, 300]  # the exhausted set is always a last look
    assert res.ci_low <= 0.04 <= res.ci_high


def test_lower_is_better_scores_flip_the_sign_of_the_drop():
    rng = np.random.default_rng(4)
    base_err = (rng.random(2000) < 0.1).astype(float)
    tuned_err = np.maximum(base_err, (rng.random(2000) < 0.2).astype(float))  # many more errors
    res = sequential_decide(base_err, tuned_err, max_drop=0.05, higher_is_better=False)
    assert res.verdict == "fail" and res.drop > 0.1
    res = sequential_decide(base_err, tuned_err, max_drop=0.05, higher_is_better=True)
    assert res.verdict == "pass" and res.drop < 0


def test_score_range_rescales_the_bounds():
    rng = np.random.default_rng(6)
    base = rng.uniform(0, 1, 500)
    tuned = np.clip(base - 0.3, 0, 1)
    unit = sequential_decide(base, tuned, max_drop=0.05)
    scaled = sequential_decide(base * 10, tuned * 10, max_drop=0.5, score_range=(0, 10))
    assert unit.verdict == scaled.verdict == "fail"
    assert scaled.n_used == unit.n_used and scaled.ci_low == pytest.approx(10 * unit.ci_low, abs=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base": [0, 1, 2], "tuned": [0, 1, 1]}, "outside score_range"),
        ({"base": [0, 1], "tuned": [0, 1, 1]}, "tuned has 3"),
        ({"base": [0, 1], "tuned": [0, float("nan")]}, "NaN"),
        ({"base": [0, 1], "tuned": [0, 1], "max_drop": 1.0}, "strictly inside"),
        ({"base": [0, 1], "tuned": [0, 1], "max_drop": float("nan")}, "strictly inside"),
        ({"base": [0, 1], "tuned": [0, 1], "looks": [0, 2]}, "looks must lie"),
        ({"base": [0, 1], "tuned": [0, 1], "alpha": 0.6}, "alpha"),
        ({"base": [], "tuned": []}, "no scores"),
        ({"base": [0, 1], "tuned": [0, 1], "score_range": (0, float("inf"))}, "finite"),
        ({"base": [0, 1], "tuned": [0, 1], "score_range": (1, 1)}, "low < high"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, match):
    kwargs.setdefault("max_drop", 0.05)
    with pytest.raises(ValueError, match=match):
        sequential_decide(**kwargs)


def test_nothing_evaluated_yet():
    res = sequential_decide([1.0, 0.0, 1.0], [], max_drop=0.05)
    assert res.verdict == "inconclusive" and not res.done and res.n_used == 0 and res.looks == ()


def test_evaluated_past_the_last_look_reports_the_bounds_so_far():
    base = np.ones(100)
    res = sequential_decide(base, base[:10], max_drop=0.05)  # fewer than min_n: no look yet
    assert res.verdict == "inconclusive" and res.n_used == 10 and res.looks == ()
    assert -1 <= res.ci_low <= 0 <= res.ci_high <= 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([-1.0, 0.0, 1.0]) | st.floats(-1, 1), min_size=1, max_size=60),
    st.sampled_from([0.02, 0.1, -0.05, 0.5]),
)
def test_bounds_are_nested_ordered_and_symmetric(values, margin):
    d = np.asarray(values)
    at = np.arange(1, len(d) + 1)
    lo, hi = confidence_bounds(d, margin=margin, at=at, alpha=ALPHA)
    assert np.all(lo <= hi + 1e-9) and np.all(lo >= -1) and np.all(hi <= 1)
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) <= 0)  # a running intersection
    # swapping the models (and mirroring the margin the bets aim at) mirrors the bounds
    nlo, nhi = confidence_bounds(-d, margin=-margin, at=at, alpha=ALPHA)
    assert np.allclose(nlo, -hi, atol=1e-8) and np.allclose(nhi, -lo, atol=1e-8)
    # the bounds after k examples depend on those k only
    k = max(1, len(d) // 2)
    plo, phi = confidence_bounds(d[:k], margin=margin, at=at[:k], alpha=ALPHA)
    assert np.array_equal(plo, lo[:k]) and np.array_equal(phi, hi[:k])
    # and the capital at the margin agrees with them: settled iff a bound is beyond the margin
    lf, lp = log_capital(d, margin=margin, alpha=ALPHA)
    thr = math.log(1 / ALPHA)
    lo1, hi1 = confidence_bounds(d, margin=margin, at=at, alpha=ALPHA, intersect=False)
    assert np.all((lf > thr + 1e-9) <= (lo1 >= margin - 1e-9))
    assert np.all((lp > thr + 1e-9) <= (hi1 <= margin + 1e-9))
