"""Probability metrics (log_loss, brier, auc, ece, precision/recall) against scikit-learn, the
probabilities classification tasks keep, and a calibration-only regression caught by ``ece``."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_forgetting import proba_metrics as pm

sklearn_metrics = pytest.importorskip("sklearn.metrics")

TOL = 1e-9


def _outputs(
    n: int, k: int, seed: int, *, missing: tuple[int, ...] = (), extra_pred: int | None = None
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = [c for c in range(k) if c not in missing]
    y = rng.choice(classes, size=n)
    pred = p.argmax(axis=1)
    if extra_pred is not None:  # a class only ever predicted, never a label
        pred[:3] = extra_pred
    return {"proba": p, "label": y, "pred": pred}


@pytest.mark.parametrize(("k", "missing"), [(2, ()), (3, ()), (5, ()), (5, (1, 3)), (4, (0,))])
def test_per_example_metrics_equal_sklearn(k, missing):
    o = _outputs(300, k, seed=k + len(missing), missing=missing)
    labels = list(range(k))
    ll = sklearn_metrics.log_loss(o["label"], o["proba"], labels=labels)
    assert abs(pm.LOG_LOSS.value(o) - ll) < TOL
    if k == 2:
        brier = sklearn_metrics.brier_score_loss(o["label"], o["proba"][:, 1])
    else:
        brier = sklearn_metrics.brier_score_loss(o["label"], o["proba"], labels=labels)
    assert abs(pm.BRIER.value(o) - brier) < TOL


@pytest.mark.parametrize(("k", "missing"), [(2, ()), (3, ()), (6, ()), (6, (2, 5))])
def test_auc_equals_sklearn(k, missing):
    o = _outputs(400, k, seed=10 + k, missing=missing)
    if k == 2:
        ref = sklearn_metrics.roc_auc_score(o["label"], o["proba"][:, 1])
    elif not missing:
        ref = sklearn_metrics.roc_auc_score(o["label"], o["proba"], multi_class="ovr", average="macro")
    else:  # macro one-vs-rest over the classes that occur
        ref = np.mean([sklearn_metrics.roc_auc_score(o["label"] == c, o["proba"][:, c]) for c in np.unique(o["label"])])
    assert abs(pm.AUC.value(o) - ref) < TOL


def test_auc_with_ties_equals_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)  # many ties
    o = {"proba": np.c_[1 - s, s], "label": y, "pred": (s > 0.5).astype(int)}
    assert abs(pm.AUC.value(o) - sklearn_metrics.roc_auc_score(y, s)) < TOL


@pytest.mark.parametrize(("k", "missing", "extra"), [(3, (), None), (6, (1,), None), (5, (0, 4), 4), (4, (), 3)])
def test_precision_recall_equal_sklearn(k, missing, extra):
    o = _outputs(250, k, seed=20 + k, missing=missing, extra_pred=extra)
    y, p = o["label"], o["pred"]
    for ours, ref in (
        (pm.PRECISION_MACRO, sklearn_metrics.precision_score),
        (pm.RECALL_MACRO, sklearn_metrics.recall_score),
    ):
        assert abs(ours.value(o) - ref(y, p, average="macro", zero_division=0)) < TOL
    labels = np.unique(np.r_[y, p])
    per_p = sklearn_metrics.precision_score(y, p, average=None, labels=labels, zero_division=0)
    per_r = sklearn_metrics.recall_score(y, p, average=None, labels=labels, zero_division=0)
    assert np.allclose(list(pm.precision_per_class(o).values()), per_p, atol=TOL, rtol=0)
    assert np.allclose(list(pm.recall_per_class(o).values()), per_r, atol=TOL, rtol=0)
    assert list(pm.precision_per_class(o)) == labels.tolist()


def test_ece_hand_computed():
    # 6 examples, 3 equal-mass bins of 2 (sorted by confidence):
    # conf .55 .6 | .7 .8 | .9 .95 ; correct 0 1 | 1 1 | 0 1
    conf = np.array([0.9, 0.55, 0.7, 0.95, 0.6, 0.8])
    correct = np.array([0, 0, 1, 1, 1, 1])
    y = np.zeros(6, dtype=int)
    proba = np.c_[np.where(correct == 1, conf, 1 - conf), np.where(correct == 1, 1 - conf, conf)]
    o = {"proba": proba, "label": y, "pred": proba.argmax(1)}
    by_hand = (abs(1 - (0.55 + 0.6)) + abs(2 - (0.7 + 0.8)) + abs(1 - (0.9 + 0.95))) / 6
    assert abs(pm.ece(o, np.arange(6), n_bins=3) - by_hand) < TOL
    # fewer examples than bins: one bin per example
    assert abs(pm.ece(o, np.arange(6), n_bins=15) - np.mean(np.abs(correct - conf))) < TOL


def test_ece_of_a_calibrated_sample_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.random(20000) < conf
    proba = np.c_[conf, 1 - conf]
    o = {"proba": proba, "label": np.where(correct, 0, 1), "pred": np.zeros(20000, int)}
    assert pm.ECE.value(o) < 0.01
    sharp = np.c_[np.full(20000, 0.999), np.full(20000, 0.001)]
    o2 = dict(o, proba=sharp)
    assert abs(pm.ECE.value(o2) - (0.999 - correct.mean())) < 0.01


# -- tasks keep the probabilities ------------------------------------------------------------------


def _teacher(seed: int = 0, d: int = 16, k: int = 4, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, d)).astype(np.float32) * scale / np.sqrt(d)


def _linear(w: np.ndarray):
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(w))
    return model.eval()


def _calibrated_task(n: int, w: np.ndarray, seed: int = 1):
    """Labels drawn from softmax(w x): the model with weights w is calibrated on it."""
    import pytest_forgetting as pf

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4)).astype(np.float32)
    logits = x.reshape(n, -1) @ w.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return pf.ImageClassificationTask(images=x, labels=y.astype(np.int64))


def _register(name: str, task) -> None:
    from pytest_forgetting.registry import REGISTRY

    REGISTRY.register(name, lambda: task, origin=f"test_proba_metrics.{name}")


def _session():
    from pytest_forgetting.options import Settings
    from pytest_forgetting.session import ForgettingSession

    return ForgettingSession(Settings(device="cpu", no_cache=True))


def _decide(sess, task: str, base, tuned, **kwargs):
    from pytest_forgetting.checks import bind_task, parse_check

    check = parse_check("retains", {"task": task, **kwargs}, "test")
    check = bind_task(check, "test", sess.task(task))
    return sess.run_check(
        check, test="test", base=sess.module_slot("base", base), tuned=sess.module_slot("tuned", tuned)
    ).row


def test_classification_task_keeps_float32_probabilities_and_bumps_its_version():
    pytest.importorskip("torch")
    from pytest_forgetting.tasks.base import Task
    from pytest_forgetting.tasks.classification import ClassificationTask

    w = _teacher()
    task = _calibrated_task(64, w)
    _register("proba-shape", task)
    sess = _session()
    res, _ = sess.evaluate(sess.module_slot("base", _linear(w)), sess.task("proba-shape"), "test")
    proba = res.outputs["proba"]
    assert proba.dtype == np.float32 and proba.shape == (64, 4)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(proba.argmax(axis=1), res.outputs["pred"])
    # the cache key holds the task version: entries made before the probabilities are not reused
    assert ClassificationTask.version != Task.version == "1"
    before = task.data_fingerprint("test")
    task.__dict__.pop("_fingerprints", None)
    task.version = "1"
    try:
        assert task.data_fingerprint("test") != before
    finally:
        del task.version
        task.__dict__.pop("_fingerprints", None)


def test_probabilities_follow_the_label_map():
    torch = pytest.importorskip("torch")
    from pytest_forgetting.tasks.classification import class_probabilities

    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])
    lookup = torch.tensor([1, 2, 0])  # model output 0 is task class 1, ...
    p = class_probabilities(logits, lookup, 3)
    soft = torch.softmax(logits, dim=1)
    assert torch.allclose(p[:, 1], soft[:, 0]) and torch.allclose(p[:, 0], soft[:, 2])
    p2 = class_probabilities(logits, torch.tensor([0, 1, 2]), 2)  # output 2 is no task class (id 2)
    assert p2.shape == (2, 2) and torch.all(p2.sum(1) < 1)


def test_temperature_0_2_fails_ece_while_accuracy_passes():
    pytest.importorskip("torch")
    w = _teacher(scale=3.0)
    _register("proba-calibration", _calibrated_task(1500, w, seed=2))
    sess = _session()
    base, tuned = _linear(w), _linear(w / 0.2)  # logits / 0.2: the same argmax, overconfident
    acc = _decide(sess, "proba-calibration", base, tuned, max_drop=0.02)
    cal = _decide(sess, "proba-calibration", base, tuned, metric="ece", max_drop=0.02)
    assert acc["verdict"] == "pass" and acc["drop"] == 0.0, acc
    assert cal["verdict"] == "fail", cal
    assert cal["base"] < 0.05 < cal["tuned"], cal
    ll = _decide(sess, "proba-calibration", base, tuned, metric="log_loss", max_drop=0.05)
    assert ll["verdict"] == "fail", ll


def test_probability_metrics_are_validated_at_collection():
    from pytest_forgetting.checks import parse_check
    from pytest_forgetting.errors import ConfigError
    from pytest_forgetting.registry import REGISTRY

    name = "proba-validate"
    if name not in REGISTRY:
        _register(name, _calibrated_task(8, _teacher()))
    assert parse_check("retains", {"task": name, "metric": "log_loss", "max_drop": 2.0}, "t").margin == 2.0  # unbounded
    with pytest.raises(ConfigError):
        parse_check("retains", {"task": name, "metric": "ece", "max_drop": 2.0}, "t")


def test_identical_models_on_the_probability_metrics():
    """Per-example metrics PASS by the exact no-change rule once n allows it; so do the aggregate
    ones, through their Sensitivity (how far the metric moves when a fraction of the examples
    changes): auc, precision_macro and recall_macro at 400 examples and a margin of 0.02; ece
    (which moves up to 2 x 15 bins per changed fraction) from exactly the n its message names."""
    from pytest_forgetting import stats

    def compare(o, metric, n, margin=0.02):
        return stats.compare_statistic(
            lambda idx: (metric.aggregate(o, idx), metric.aggregate(o, idx)),
            n,
            max_drop=margin,
            higher_is_better=metric.higher_is_better,
            bounded=True,
            sensitivity=metric.sensitivity(o, o),
        )

    o = _outputs(400, 3, seed=5)
    s = pm.BRIER.per_example(o)  # Brier's own range [0, 2] bounds a change: valid at every n
    same = stats.compare_scores(s, s, max_drop=0.02, higher_is_better=False, score_range=pm.BRIER.score_range)
    assert same.verdict == "pass" and same.method == "exact-no-change"
    s = pm.LOG_LOSS.per_example(o)  # no range: refused below 1,000 examples, then its sample range stands in
    assert stats.compare_scores(s, s, max_drop=0.1, higher_is_better=False).method == "refused"
    s = pm.LOG_LOSS.per_example(_outputs(1000, 3, seed=5))
    assert stats.compare_scores(s, s, max_drop=0.1, higher_is_better=False).verdict == "pass"
    for metric in (pm.AUC, pm.PRECISION_MACRO, pm.RECALL_MACRO):
        cmp = compare(o, metric, 400)
        assert cmp.verdict == "pass" and cmp.drop == 0.0 and cmp.method == "exact-no-change", (metric.name, cmp)
    cmp = compare(o, pm.ECE, 400)
    assert cmp.verdict == "inconclusive" and "if, as here, no example changes" in cmp.reason, cmp
    need = cmp.n_needed
    assert 4000 < need < 5000  # 30 (1 - 0.05^(1/n)) < 0.02
    big = _outputs(need, 3, seed=5)
    assert compare(big, pm.ECE, need).verdict == "pass"
    assert compare({k: v[:-1] for k, v in big.items()}, pm.ECE, need - 1).verdict == "inconclusive"
    # without a Sensitivity the bootstrap has no spread: refused, never a verdict
    plain = stats.compare_statistic(lambda idx: (pm.auc(o, idx), pm.auc(o, idx)), 400, max_drop=0.02, bounded=True)
    assert plain.verdict == "inconclusive"
