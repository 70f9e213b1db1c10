"""Per-class precision budgets (``max_class_drop`` with ``class_metric="precision"``, class_budget.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from table_model import table_model

from pytest_forgetting import class_budget as cb

ALPHA = 0.05


def _se(p: float, reps: int) -> float:
    return math.sqrt(max(p, ALPHA) * (1 - max(p, ALPHA)) / reps)


def _random_pair(rng, n, k):
    y = rng.integers(0, k, n)
    pb = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
    pt = np.where(rng.random(n) < 0.85, pb, rng.integers(0, k, n))
    return y, pb, pt


# -- values and bounds against independent references ---------------------------------------------


def test_values_equal_scikit_learn_precision_including_missing_classes():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, pb, pt = _random_pair(rng, 600, 7)
    y[y == 6] = 5  # class 6 only ever predicted, never a label
    pt[pt == 2] = 3  # the tuned model never predicts class 2
    pb[pb == 4] = 0  # nor the base class 4
    got = {c.name: c for c in cb.class_precision_drops(y, pb, pt, limit=0.1)}
    labels = np.unique(np.concatenate([y, pb, pt]))
    assert sorted(got, key=int) == [str(v) for v in labels]
    ref_b = sklearn.precision_score(y, pb, labels=labels, average=None, zero_division=0)
    ref_t = sklearn.precision_score(y, pt, labels=labels, average=None, zero_division=0)
    for lab, rb, rt in zip(labels, ref_b, ref_t):
        c = got[str(lab)]
        assert abs(c.base - rb) <= 1e-9 and abs(c.tuned - rt) <= 1e-9 and abs(c.drop - (rb - rt)) <= 1e-9
    assert got["2"].n_tuned == 0 and got["2"].tuned == 0.0 and got["2"].ci_low <= got["2"].drop
    assert got["4"].n_base == 0 and got["4"].verdict != "fail"  # nothing known about the base's precision


def test_bounds_equal_clopper_pearson_from_scipy():
    beta = pytest.importorskip("scipy.stats").beta
    rng = np.random.default_rng(3)
    y, pb, pt = _random_pair(rng, 800, 5)
    limit, alpha, fail_alpha = 0.05, 0.05, 0.025
    k = 5

    def lo(x, m, a):
        return 0.0 if x == 0 else float(beta.ppf(a, x, m - x + 1))

    def hi(x, m, a):
        return 1.0 if x == m else float(beta.ppf(1 - a, x + 1, m - x))

    for c in cb.class_precision_drops(y, pb, pt, limit=limit, alpha=alpha, fail_alpha=fail_alpha):
        j = int(c.name)
        mb, mt = int((pb == j).sum()), int((pt == j).sum())
        xb, xt = int(((pb == j) & (y == j)).sum()), int(((pt == j) & (y == j)).sum())
        both = int(((pb == j) & (pt == j)).sum())
        a_fail = fail_alpha / (2 * k)
        assert c.ci_low == pytest.approx(lo(xb, mb, a_fail) - hi(xt, mt, a_fail), abs=1e-9)
        s_ub, s_lt, s_rb, s_rt = (share * alpha for share in cb.PASS_SPLIT)
        unpaired = hi(xb, mb, s_ub) - lo(xt, mt, s_lt)
        agreement = max(hi(mb - both, mb, s_rb), hi(mt - both, mt, s_rt))
        assert c.ci_high == pytest.approx(min(unpaired, agreement), abs=1e-9)
        assert (c.n_base, c.n_tuned, c.tp_base, c.tp_tuned, c.shared) == (mb, mt, xb, xt, both)


def test_generator_has_the_stated_precisions():
    sklearn = pytest.importorskip("sklearn.metrics")
    drops = np.zeros(10)
    drops[[2, 7]] = [0.1, 0.15]
    y, pb, pt, prec_b, prec_t = cb.sample_pair(np.random.default_rng(0), 10, 200_000, drops=drops, discord=0.15)
    assert np.allclose(prec_b - prec_t, drops)
    assert np.abs(sklearn.precision_score(y, pb, average=None) - prec_b).max() < 0.01
    assert np.abs(sklearn.precision_score(y, pt, average=None) - prec_t).max() < 0.01


# -- the error rates at the margin (seeded; benchmarks/class_precision_calibration.py runs more) -----


@pytest.mark.parametrize(("k", "n", "discord"), [(10, 300, 0.1), (10, 1000, 0.3), (100, 1000, 0.2)])
def test_false_fail_at_most_alpha_when_every_class_is_at_the_margin(k, n, discord):
    reps = 120
    out = cb.simulate(k, n, limit=0.1, drops=0.1, discord=discord, reps=reps, seed=11)
    assert abs(out["true_max_drop"] - 0.1) < 1e-9
    assert out["fail"] <= ALPHA + 3 * _se(out["fail"], reps), out


@pytest.mark.parametrize("discord", [0.1, 0.25])  # 0.1 = the budget: the least favourable case of the paired bound
def test_false_pass_at_most_alpha_when_one_class_is_at_the_margin(discord):
    reps = 120
    drops = np.zeros(10)
    drops[0] = 0.1
    out = cb.simulate(10, 3000, limit=0.1, drops=drops, discord=discord, reps=reps, seed=12)
    assert out["pass"] <= ALPHA + 3 * _se(out["pass"], reps), out


def test_the_simulation_catches_a_rule_that_is_not_valid():
    """The harness is not blind: the point estimate as a FAIL rule fails about half the time at the margin."""
    rng = np.random.default_rng(5)
    drops = np.full(10, 0.1)
    naive = 0
    for _ in range(60):
        y, pb, pt, _, _ = cb.sample_pair(rng, 10, 1000, drops=drops, discord=0.3)
        naive += any(c.drop > 0.1 for c in cb.class_precision_drops(y, pb, pt, limit=0.1))
    assert naive / 60 > 0.5


def test_identical_models_pass_and_a_collapsed_class_fails():
    same = cb.simulate(10, 1000, limit=0.1, drops=0.0, discord=0.0, reps=20, seed=1)
    assert same["pass"] >= 0.9, same
    drops = np.zeros(10)
    drops[4] = 0.35
    lost = cb.simulate(10, 5000, limit=0.1, drops=drops, discord=0.4, reps=20, seed=2)
    assert lost["fail"] >= 0.9, lost


def test_paired_bound_settles_identical_models_where_the_unpaired_one_cannot():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 320)
    pred = np.where(rng.random(320) < 0.8, y, (y + 1) % 4)  # ~80 predictions per class, 80 % precision
    out = cb.class_precision_drops(y, pred, pred, limit=0.1)
    assert all(c.verdict == "pass" for c in out), out
    # the unpaired bound alone would be ~0.25 wide here; the agreement bound is 1 - (0.05 alpha)^(1/m)
    assert cb.PASS_SPLIT == (0.45, 0.45, 0.05, 0.05)
    for c in out:
        assert c.ci_high == pytest.approx(1 - (0.05 * ALPHA) ** (1 / c.n_base), rel=1e-9)
    alone = cb.class_precision_drops(y, pred, pred, limit=0.1, paired=False)
    assert all(c.verdict == "inconclusive" and c.ci_high > 0.15 for c in alone), alone


# -- messages, validation ------------------------------------------------------------------------------


def test_failure_text_names_the_classes_their_precisions_and_the_bound():
    rng = np.random.default_rng(1)
    n = 3000
    y = rng.integers(0, 3, n)
    pb = y.copy()
    pt = y.copy()
    pt[(y == 1) & (rng.random(n) < 0.4)] = 0  # 40 % of class 1 now predicted "cat": its precision collapses
    out = cb.class_precision_drops(y, pb, pt, limit=0.1, class_names=["cat", "dog", "owl"])
    assert out[0].name == "cat" and out[0].verdict == "fail"
    text = cb.describe(out, 0.1)
    assert text.startswith("class precision drop budget 0.1: cat precision 1.000 -> 0.")
    assert f"lower bound {out[0].ci_low:+.3f} = {out[0].base_low:.3f} - {out[0].tuned_high:.3f} > 0.1" in text
    assert "dog" not in text  # its precision is intact (its recall is not: that is the recall budget's job)
    assert cb.describe([c for c in out if c.verdict == "pass"], 0.1) == ""


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="aligned"):
        cb.class_precision_drops([0, 1], [0, 1, 1], [0, 1], limit=0.1)
    with pytest.raises(ValueError, match="1-D"):
        cb.class_precision_drops([[0, 1]], [0, 1], [0, 1], limit=0.1)
    with pytest.raises(ValueError, match="missing"):
        cb.class_precision_drops([0.0, np.nan], [0, 1], [0, 1], limit=0.1)
    with pytest.raises(ValueError, match="at least one example"):
        cb.class_precision_drops([], [], [], limit=0.1)
    with pytest.raises(ValueError, match="alpha"):
        cb.class_precision_drops([0, 1], [0, 1], [0, 1], limit=0.1, alpha=0.7)
    with pytest.raises(ValueError, match="max_class_drop"):
        cb.class_precision_drops([0, 1], [0, 1], [0, 1], limit=float("nan"))
    with pytest.raises(ValueError, match="one comparable kind"):
        cb.class_precision_drops(np.array([0, 1], dtype=object), np.array(["a", 1], dtype=object), [0, 1], limit=0.1)


def _register_tiny(name: str):
    import pytest_forgetting as pf
    from pytest_forgetting.registry import REGISTRY

    if name not in REGISTRY:
        REGISTRY.register(
            name,
            lambda: pf.ImageClassificationTask(images=np.zeros((4, 2, 2)), labels=[0, 1, 0, 1]),
            origin="test_class_budget",
        )


def test_class_metric_is_validated_at_collection():
    from pytest_forgetting.checks import parse_check
    from pytest_forgetting.errors import ConfigError

    _register_tiny("cb-validate")
    base = {"task": "cb-validate", "max_drop": 0.02, "max_class_drop": 0.1}
    assert parse_check("retains", base, "t").class_metric == "recall"
    assert parse_check("retains", {**base, "class_metric": "precision"}, "t").class_metric == "precision"
    with pytest.raises(
        ConfigError, match=r"class_metric='precison' is not one of recall, precision \(did you mean 'precision'\?\)"
    ):
        parse_check("retains", {**base, "class_metric": "precison"}, "t")
    with pytest.raises(ConfigError, match="add max_class_drop="):
        parse_check("retains", {"task": "cb-validate", "max_drop": 0.02, "class_metric": "precision"}, "t")
    with pytest.raises(ConfigError, match="slices="):
        parse_check("retains", {**base, "class_metric": "precision", "slices": "group"}, "t")
    with pytest.raises(ConfigError, match="unknown keyword 'class_metric'"):
        parse_check("improves", {"task": "cb-validate", "min_gain": 0.0, "class_metric": "precision"}, "t")


# -- end to end ------------------------------------------------------------------------------------


_Table = table_model  # preset logits per example index (tests/table_model.py)


def _run(task_name: str, base, tuned, **kwargs):
    from pytest_forgetting.checks import bind_task, parse_check
    from pytest_forgetting.options import Settings
    from pytest_forgetting.session import ForgettingSession

    sess = ForgettingSession(Settings(device="cpu", no_cache=True))
    check = bind_task(parse_check("retains", {"task": task_name, **kwargs}, "test"), "test", sess.task(task_name))
    return sess.run_check(
        check, test="test", base=sess.module_slot("base", base), tuned=sess.module_slot("tuned", tuned)
    ).row


def test_precision_budget_fails_where_the_recall_budget_passes():
    """Five percent of every other class now predicted as class 0: each class loses 5 points of recall
    (inside a 10-point budget) but class 0's precision falls by about 30 points."""
    pytest.importorskip("torch")
    import pytest_forgetting as pf
    from pytest_forgetting.registry import REGISTRY

    k, n = 10, 6000
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1)
    REGISTRY.register(
        "cb-e2e",
        lambda: pf.ImageClassificationTask(images=x, labels=y, class_names=[f"c{i}" for i in range(k)]),
        origin="test_class_budget",
    )
    base_pred = y.copy()
    tuned_pred = y.copy()
    tuned_pred[(y != 0) & (rng.random(n) < 0.05)] = 0
    base, tuned = _Table(base_pred, k), _Table(tuned_pred, k)
    recall = _run("cb-e2e", base, tuned, max_drop=0.2, max_class_drop=0.1)
    assert recall["verdict"] == "pass", recall
    row = _run("cb-e2e", base, tuned, max_drop=0.2, max_class_drop=0.1, class_metric="precision")
    assert row["verdict"] == "fail" and row["class_metric"] == "precision", row
    worst = row["worst_classes"][0]
    assert worst["name"] == "c0" and worst["verdict"] == "fail" and worst["metric"] == "precision"
    assert worst["base"] == 1.0 and worst["tuned"] == pytest.approx(600 / (600 + int((tuned_pred == 0).sum()) - 600))
    assert (
        "class precision drop budget 0.1: c0 precision 1.000 -> 0.6" in row["reason"] and "lower bound" in row["reason"]
    )
    same = _run("cb-e2e", base, base, max_drop=0.2, max_class_drop=0.1, class_metric="precision")
    assert same["verdict"] == "pass", same


def test_marker_through_pytest_reports_the_precision_budget(make_project):
    pytest.importorskip("torch")
    import json

    proj = make_project(n=1200, trap=150)  # the tuned model sends 150 of class 0's 300 examples to class 1
    proj.test_file(
        """
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.5, max_class_drop=0.1, class_metric="precision")
        def test_no_class_gets_polluted():
            pass
        """
    )
    tuned = proj.tuned(trap_weight=20.0)
    md = proj.path / "r.md"
    result = proj.pytester.runpytest(
        *proj.args(tuned, "--forgetting-json", str(proj.path / "r.json"), "--forgetting-markdown", str(md))
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*class precision drop budget 0.1: 1 precision 1.000 -> 0.667 (300/300 -> 300/450)*fail: lower bound*",
            "*classes:  worst precision 1 +33.3 pp*FAIL*",
        ]
    )
    row = json.loads((proj.path / "r.json").read_text())["rows"][0]
    assert row["class_metric"] == "precision" and row["worst_classes"][0]["name"] == "1"
    assert row["worst_classes"][0]["verdict"] == "fail" and row["worst_classes"][0]["n_tuned"] == 450
    assert "FAIL" in md.read_text()


def test_class_metric_from_a_declaration_and_a_task_without_predictions():
    from pytest_forgetting.checks import parse_check
    from pytest_forgetting.declarations import parse_spec
    from pytest_forgetting.errors import ConfigError

    _register_tiny("cb-validate")
    d = parse_spec("retains", "cb-validate:0.02,max_class_drop=0.1,class_metric=precision")
    assert parse_check(d.kind, d.kwargs, d.where).class_metric == "precision"
    labels = np.array([0, 1, 1])
    with pytest.raises(ConfigError, match="needs one predicted class per example; task 'x' has none"):
        cb.precision_part(
            {"label": labels},
            {"label": labels},
            limit=0.1,
            alpha=0.05,
            fail_alpha=0.05,
            class_names=None,
            top=3,
            task="x",
        )
    part = cb.precision_part(
        {"label": labels, "pred": labels},
        {"label": labels, "pred": labels},
        limit=None,
        alpha=0.05,
        fail_alpha=0.05,
        class_names=["a", "b"],
        top=3,
        task="x",
    )
    assert part.budgets == [] and part.verdicts == [] and part.reason == ""  # shown, not gated
    assert {r["name"] for r in part.rows} == {"a", "b"} and all(r["verdict"] == "" for r in part.rows)
