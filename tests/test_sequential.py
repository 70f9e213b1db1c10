"""The sequential (early-stopping) decision: error rates by seeded simulation, savings, contract.

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

from pytest_forgetting.sequential import chunk_looks, confidence_sequence, first_settled, sequential_decide

ALPHA = 0.05


def paired_flips(rng: np.random.Generator, shape: tuple[int, int], neg: float, pos: float) -> np.ndarray:
    """Per-example drops of 0/1 correctness: +1 (base right, tuned wrong) with probability ``neg``,
    -1 with probability ``pos``, else 0 (the models agree). The true mean drop is neg - pos."""
    u = rng.random(shape)
    return np.where(u < neg, 1.0, np.where(u < neg + pos, -1.0, 0.0))


def stop_rates(drops: np.ndarray, margin: float, looks: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """(share of sequences that PASS, share that FAIL, fraction of examples used per sequence)."""
    n = drops.shape[-1]
    lo, hi = confidence_sequence(drops, alpha=ALPHA)
    looks = np.arange(1, n + 1) if looks is None else looks
    first, code = first_settled(lo, hi, margin, looks)
    used = np.where(first >= 0, looks[np.maximum(first, 0)], n) / n
    return float(np.mean(code == 1)), float(np.mean(code == -1)), used


def tolerance(p: float, reps: int) -> float:
    return p + 3 * math.sqrt(p * (1 - p) / reps)


# -- error rates ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("neg", "pos"), [(0.08, 0.03), (0.25, 0.20)], ids=["few-flips", "many-flips"])
def test_false_pass_rate_at_the_margin_stays_below_alpha(neg, pos):
    """True drop exactly at the margin, looking after every example: PASS (and FAIL) are errors."""
    reps, n, margin = 2000, 1000, neg - pos
    drops = paired_flips(np.random.default_rng(11), (reps, n), neg, pos)
    passed, failed, _ = stop_rates(drops, margin)
    assert passed <= tolerance(ALPHA, reps)
    assert failed <= tolerance(ALPHA, reps)


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


def test_false_pass_rate_with_continuous_bounded_scores():
    """General scores in [0, 1] (not 0/1): tuned is worse by exactly the margin on average."""
    reps, n, margin = 2000, 800, 0.05
    rng = np.random.default_rng(5)
    base = rng.beta(4, 2, size=(reps, n))
    tuned = np.clip(base - margin + rng.normal(0, 0.15, size=(reps, n)), 0, 1)
    drops = base - tuned
    true_drop = float(drops.mean())  # clipping to [0, 1] moves it a little off 0.05; 1.6M draws pin it down
    assert abs(true_drop - margin) < 0.01
    passed, failed, _ = stop_rates(drops, true_drop)
    assert passed <= tolerance(ALPHA, reps) and failed <= tolerance(ALPHA, reps)


def test_confidence_sequence_covers_the_mean_at_all_times_at_once():
    reps, n, neg, pos = 2000, 1000, 0.12, 0.04
    drops = paired_flips(np.random.default_rng(3), (reps, n), neg, pos)
    lo, hi = confidence_sequence(drops, alpha=ALPHA)
    mu = neg - pos
    miss_low = float(np.mean((lo > mu).any(axis=1)))
    miss_high = float(np.mean((hi < mu).any(axis=1)))
    assert miss_low <= tolerance(ALPHA, reps) and miss_high <= tolerance(ALPHA, reps)


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
    assert (step.verdict, step.n_used, step.ci_low, step.ci_high) == (full.verdict, full.n_used, full.ci_low, full.ci_high)
    assert seen == full.n_used


def test_exhausted_set_is_inconclusive_and_done():
    base = np.ones(300)
    tuned = base.copy()
    tuned[::25] = 0  # a drop of 0.04, spread evenly: 300 examples cannot tell it from the 0.05 margin
    res = sequential_decide(base, tuned, max_drop=0.05, looks=[100, 200])
    assert res.verdict == "inconclusive" and res.done and not res.settled
    assert res.n_used == 300 and res.fraction_used == 1.0
    assert [k.n for k in res.looks] == [100, 200, 300]  # the exhausted set is always a last look


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
    assert scaled.n_used == unit.n_used and scaled.ci_low == pytest.approx(10 * unit.ci_low)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base": [0, 1, 2], "tuned": [0, 1, 1]}, "outside score_range"),
        ({"base": [0, 1], "tuned": [0, 1, 1]}, "tuned has 3"),
        ({"base": [0, 1], "tuned": [0, float("nan")]}, "NaN"),
        ({"base": [0, 1], "tuned": [0, 1], "max_drop": 1.0}, "strictly inside"),
        ({"base": [0, 1], "tuned": [0, 1], "looks": [0, 2]}, "looks must lie"),
        ({"base": [0, 1], "tuned": [0, 1], "alpha": 0.6}, "alpha"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, match):
    kwargs.setdefault("max_drop", 0.05)
    with pytest.raises(ValueError, match=match):
        sequential_decide(**kwargs)


def test_nothing_evaluated_yet():
    res = sequential_decide([1.0, 0.0, 1.0], [], max_drop=0.05)
    assert res.verdict == "inconclusive" and not res.done and res.n_used == 0 and res.looks == ()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 0.0, 1.0]) | st.floats(-1, 1), min_size=1, max_size=60))
def test_bounds_are_nested_ordered_and_symmetric(values):
    d = np.asarray(values)
    lo, hi = confidence_sequence(d, alpha=ALPHA)
    assert np.all(lo <= hi + 1e-12) and np.all(lo >= -1) and np.all(hi <= 1)
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) <= 0)  # a running intersection
    nlo, nhi = confidence_sequence(-d, alpha=ALPHA)  # swapping the models mirrors the bounds
    assert np.allclose(nlo, -hi) and np.allclose(nhi, -lo)
    # the bounds after k examples depend on those k only
    k = max(1, len(d) // 2)
    plo, phi = confidence_sequence(d[:k], alpha=ALPHA)
    assert np.array_equal(plo, lo[:k]) and np.array_equal(phi, hi[:k])
