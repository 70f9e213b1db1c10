"""The slice-gap statistic (``max_gap_increase``): validity at the margin, identical models, the check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from table_model import table_model

from pytest_forgetting import gap

ALPHA = 0.05


def _se(p: float, reps: int) -> float:
    return math.sqrt(max(p, ALPHA) * (1 - max(p, ALPHA)) / reps)


@pytest.mark.parametrize(
    ("base", "tuned", "n", "margin"),
    [
        ([0.8, 0.8], [0.85, 0.75], 100, 0.10),  # close slices (equal in the base), small n
        ([0.9, 0.6], [0.95, 0.55], 300, 0.10),  # far slices
        ([0.8, 0.78, 0.82, 0.8, 0.79], [0.9, 0.78, 0.82, 0.8, 0.69], 200, 0.17),  # five close slices
        ([0.7, 0.9], [0.7, 0.9], 50, 0.0),  # no change, margin 0: every verdict is wrong
    ],
)
def test_false_pass_and_false_fail_at_the_margin_are_at_most_alpha(base, tuned, n, margin):
    reps = 150
    out = gap.simulate(base, tuned, n, margin=margin, reps=reps, seed=7)
    assert abs(out["true_increase"] - margin) < 1e-9
    assert out["pass"] <= ALPHA + 3 * _se(out["pass"], reps), out
    assert out["fail"] <= ALPHA + 3 * _se(out["fail"], reps), out


def test_a_real_widening_fails_and_no_change_passes():
    wide = gap.simulate([0.8, 0.8], [0.95, 0.6], 1000, margin=0.05, reps=40, seed=1)
    assert wide["fail"] >= 0.9, wide
    same = gap.simulate([0.85, 0.8], [0.85, 0.8], 1500, margin=0.1, churn=0.02, reps=40, seed=2)
    assert same["pass"] >= 0.9, same


@pytest.mark.parametrize(("k", "margin"), [(2, 0.05), (3, 0.02), (10, 0.1)])
def test_identical_models_pass_from_the_smallest_slice_size(k, margin):
    n = gap.min_n_per_slice(margin, k, ALPHA)
    rng = np.random.default_rng(k)
    for size, want in ((n, "pass"), (n - 1, "inconclusive")):
        scores = (rng.random(k * size) < 0.8).astype(float)
        groups = np.repeat(np.arange(k), size)
        cmp = gap.compare_gap(scores, scores, groups, margin=margin, alpha=ALPHA)
        assert cmp.verdict == want, (size, cmp)
        assert cmp.increase == 0.0
    assert "needs >= " in gap.describe(cmp)


def test_bounds_by_hand_for_two_slices():
    # slice a: 10 of 100 negative flips, slice b: untouched; exact (Clopper-Pearson) bounds
    from pytest_forgetting import stats

    bs = np.ones(200)
    ts = np.ones(200)
    ts[:10] = 0
    groups = np.r_[np.zeros(100), np.ones(100)].astype(int)
    cmp = gap.compare_gap(bs, ts, groups, margin=0.5, alpha=ALPHA, names=["a", "b"])
    a = ALPHA / 4  # 2K bounds on the PASS side
    # upper: max_s upper(d_s) - min_s lower(d_s) = upper(d_b) - lower(d_a); d = -(drop of the 0/1 path)
    up_b = -stats._paired_bounds(0, 0, 100, a, a)[0]
    lo_a = -stats._paired_bounds(10, 0, 100, a, a)[1]
    assert up_b == pytest.approx(stats._cp_upper(0, 100, a), abs=1e-15)  # nothing flipped: exact
    assert cmp.ci_high == pytest.approx(up_b - lo_a, abs=1e-12)
    assert (cmp.best, cmp.worst) == ("b", "a") and cmp.increase == pytest.approx(0.1)
    assert cmp.verdict == "pass" and cmp.method == "tango-union"
    old, gap._CHANGE = gap._CHANGE, "exact"  # the all-Clopper-Pearson variant is wider
    try:
        assert gap.compare_gap(bs, ts, groups, margin=0.5, alpha=ALPHA).ci_high > cmp.ci_high
    finally:
        gap._CHANGE = old


def test_continuous_scores_and_input_errors():
    rng = np.random.default_rng(0)
    bs = rng.random(2000) * 0.3
    ts = bs.copy()
    ts[:1000] += 0.4  # slice 0 gets much worse: a lower-is-better score's gap widens
    groups = np.repeat([0, 1], 1000)
    cmp = gap.compare_gap(bs, ts, groups, margin=0.05)
    assert cmp.verdict == "fail" and cmp.method == "bootstrap-union"
    # unbounded per-example scores decide only from stats._MIN_UNBOUNDED_N examples per slice
    few = np.r_[0:300, 1000:1300]
    small = gap.compare_gap(bs[few], ts[few], groups[few], margin=0.05)
    assert small.verdict == "inconclusive" and "no valid bound" in small.reason
    with pytest.raises(ValueError, match="aligned"):
        gap.compare_gap(bs, ts[:-1], groups, margin=0.05)
    with pytest.raises(ValueError, match="NaN"):
        gap.compare_gap(np.r_[bs[:-1], np.nan], ts, groups, margin=0.05)
    assert gap.compare_gap(bs, ts, np.zeros(2000), margin=0.05).verdict == "inconclusive"


# -- the marker keyword, end to end -------------------------------------------------------------


_Table = table_model  # preset logits per example index (tests/table_model.py)


def _slice_task(n_per: int, seed: int = 0):
    import pytest_forgetting as pf

    rng = np.random.default_rng(seed)
    n = 2 * n_per
    y = rng.integers(0, 3, n)
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1)
    source = np.repeat(["news", "forum"], n_per)
    return pf.ImageClassificationTask(images=x, labels=y, columns={"source": source}), y


def _preds(y: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.where(right, y, (y + 1) % 3)


def _run(task_name: str, base, tuned, **kwargs):
    from pytest_forgetting.checks import bind_task, parse_check
    from pytest_forgetting.options import Settings
    from pytest_forgetting.session import ForgettingSession

    sess = ForgettingSession(Settings(device="cpu", no_cache=True))
    check = bind_task(parse_check("retains", {"task": task_name, **kwargs}, "test"), "test", sess.task(task_name))
    return sess.run_check(
        check, test="test", base=sess.module_slot("base", base), tuned=sess.module_slot("tuned", tuned)
    ).row


def test_widened_slice_gap_fails_while_the_overall_drop_passes():
    pytest.importorskip("torch")
    from pytest_forgetting.registry import REGISTRY

    n_per = 1500
    task, y = _slice_task(n_per)
    REGISTRY.register("gap-slices", lambda: task, origin="test_gap")
    rng = np.random.default_rng(1)
    base_right = rng.random(2 * n_per) < 0.8
    tuned_right = base_right.copy()
    news, forum = np.arange(n_per), np.arange(n_per, 2 * n_per)
    tuned_right[news[~base_right[news]][: int(0.15 * n_per)]] = True  # news: +15 points
    tuned_right[forum[base_right[forum]][: int(0.15 * n_per)]] = False  # forum: -15 points
    base, tuned = _Table(_preds(y, base_right), 3), _Table(_preds(y, tuned_right), 3)
    overall = _run("gap-slices", base, tuned, max_drop=0.02)
    assert overall["verdict"] == "pass", overall
    row = _run("gap-slices", base, tuned, max_drop=0.02, slices="source", max_gap_increase=0.05)
    assert row["verdict"] == "fail", row
    assert row["gap"]["best"] == "news" and row["gap"]["worst"] == "forum"
    assert "news vs forum" in row["reason"] and row["gap"]["increase"] > 0.25
    same = _run("gap-slices", base, base, max_drop=0.02, slices="source", max_gap_increase=0.05)
    assert same["verdict"] == "pass", same
    by_class = _run("gap-slices", base, base, max_drop=0.02, max_gap_increase=0.1)
    assert by_class["verdict"] == "pass" and by_class["gap"]["of"] == "class", by_class


def test_max_gap_increase_is_validated_at_collection():
    from pytest_forgetting.checks import parse_check
    from pytest_forgetting.errors import ConfigError
    from pytest_forgetting.registry import REGISTRY

    name = "gap-validate"
    if name not in REGISTRY:
        import pytest_forgetting as pf

        REGISTRY.register(
            name, lambda: pf.ImageClassificationTask(images=np.zeros((4, 2, 2)), labels=[0, 1, 0, 1]), origin="test_gap"
        )
    assert (
        parse_check("retains", {"task": name, "max_drop": 0.02, "max_gap_increase": 0.03}, "t").max_gap_increase == 0.03
    )
    with pytest.raises(ConfigError, match="max_gap_increase"):
        parse_check("retains", {"task": name, "max_drop": 0.02, "max_gap_increase": -0.1}, "t")
    with pytest.raises(ConfigError, match="did you mean"):
        parse_check("retains", {"task": name, "max_drop": 0.02, "max_gap_increse": 0.1}, "t")


def test_marker_through_pytest_names_the_classes_and_reports_the_gap_and_drift(make_project):
    pytest.importorskip("torch")
    import json

    proj = make_project(n=1200, trap=150)  # the tuned model sends 150 of class 0's 300 examples to class 1
    proj.test_file(
        """
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.2, max_gap_increase=0.05)
        def test_no_class_falls_behind():
            pass
        """
    )
    tuned = proj.tuned(trap_weight=20.0)
    result = proj.pytester.runpytest(*proj.args(tuned, "--forgetting-json", str(proj.path / "r.json")))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*class gap 1 vs 0: 0.000 -> 0.500*fail*", "*weights:  most change: 1 (+*"])
    row = json.loads((proj.path / "r.json").read_text())["rows"][0]
    assert row["max_gap_increase"] == 0.05 and row["gap"]["worst"] == "0" and row["gap"]["verdict"] == "fail"
    assert row["weight_drift"][0]["block"] == "1" and row["weight_drift"][0]["rel"] > 0
