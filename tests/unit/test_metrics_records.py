"""Metric records (issue 15): a per-example metric and an aggregate metric are two types on one base.

``PerExampleMetric`` carries its per-example scores (and an optional declared score range);
``AggregateMetric`` carries its set function and what the decision core may use of it (ratio form,
``ratio_den_fixed``, ``ratio_no_change``, sensitivity). ``Metric(...)`` with the pre-split keyword
arguments still builds the matching one, with the same values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import pytest_forgetting
from pytest_forgetting import metrics as m
from pytest_forgetting import proba_metrics as pm
from pytest_forgetting.metrics import AggregateMetric, Metric, PerExampleMetric, ratio_of

PER_EXAMPLE = {"accuracy", "error_rate", "exact_match", "log_loss", "brier"}
AGGREGATE = {
    "f1_macro",
    "balanced_accuracy",
    "nll",
    "perplexity",
    "wer",
    "cer",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
    "auc",
    "ece",
    "precision_macro",
    "recall_macro",
}


def _builtin() -> dict[str, Metric]:
    found = {x.name: x for x in vars(m).values() if isinstance(x, Metric)}
    found.update(pm.PROBA_METRICS)
    return found


def _outputs(n: int = 60, k: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {
        "label": rng.integers(0, k, n),
        "pred": proba.argmax(axis=1),
        "proba": proba,
        "nll": rng.gamma(2.0, 1.0, n),
        "ntok": rng.integers(1, 20, n),
        "nwords": rng.integers(1, 8, n),
        "nbytes": rng.integers(5, 60, n),
        "exact": rng.random(n) < 0.5,
        "word_errors": rng.integers(0, 4, n),
        "ref_words": rng.integers(3, 9, n),
        "char_errors": rng.integers(0, 9, n),
        "ref_chars": rng.integers(10, 40, n),
    }


def test_every_builtin_metric_is_one_of_the_two_kinds():
    found = _builtin()
    assert set(found) == PER_EXAMPLE | AGGREGATE
    for name, metric in found.items():
        assert isinstance(metric, PerExampleMetric if name in PER_EXAMPLE else AggregateMetric), name
        assert (
            isinstance(metric, Metric)
            and isinstance(metric.higher_is_better, bool)
            and isinstance(metric.bounded, bool)
        )
    assert pytest_forgetting.Metric is Metric


def test_the_kinds_carry_only_their_own_fields():
    per = {f.name for f in dataclasses.fields(PerExampleMetric)}
    agg = {f.name for f in dataclasses.fields(AggregateMetric)}
    common = {"name", "higher_is_better", "bounded", "description"}
    assert per == common | {"per_example", "score_range"}
    assert agg == common | {"aggregate", "ratio", "transform", "ratio_den_fixed", "ratio_no_change", "sensitivity"}
    # the pre-split record's other callable reads None, for code written against it
    assert m.ACCURACY.aggregate is None and m.F1_MACRO.per_example is None and m.F1_MACRO.score_range is None


def test_values_are_the_mean_of_the_scores_or_the_set_function():
    o = _outputs()
    idx = np.arange(10, 50)
    for name, metric in _builtin().items():
        if isinstance(metric, PerExampleMetric):
            scores = metric.per_example(o)
            assert metric.value(o) == float(np.mean(scores)), name
            assert metric.value(o, idx) == float(np.mean(scores[idx])), name
        else:
            assert isinstance(metric, AggregateMetric)
            assert metric.value(o) == float(metric.aggregate(o, np.arange(60))), name
            assert metric.value(o, idx) == float(metric.aggregate(o, idx)), name
    assert m.ACCURACY.value(o) == float(np.mean(o["pred"] == o["label"]))


def test_the_pre_split_constructor_builds_the_matching_kind():
    o = _outputs()
    legacy = Metric("acc", True, True, per_example=m.ACCURACY.per_example, description="d", score_range=(0.0, 1.0))
    assert type(legacy) is PerExampleMetric
    assert legacy == PerExampleMetric(
        "acc", True, True, m.ACCURACY.per_example, description="d", score_range=(0.0, 1.0)
    )
    positional = Metric("acc", True, True, m.ACCURACY.per_example)  # per_example was the fourth field
    assert type(positional) is PerExampleMetric and positional.value(o) == m.ACCURACY.value(o)
    f1 = m.F1_MACRO
    legacy_f1 = Metric(
        "f1_macro",
        True,
        True,
        aggregate=f1.aggregate,
        description=f1.description,
        ratio=f1.ratio,
        sensitivity=f1.sensitivity,
    )
    assert type(legacy_f1) is AggregateMetric and legacy_f1 == f1
    ppl = Metric(
        "perplexity",
        False,
        False,
        None,
        m.PERPLEXITY.aggregate,
        ratio=m.PERPLEXITY.ratio,
        transform="exp",
        ratio_den_fixed=True,
        ratio_no_change=False,
    )
    assert type(ppl) is AggregateMetric and ppl.value(o) == m.PERPLEXITY.value(o)
    assert (ppl.transform, ppl.ratio_den_fixed, ppl.ratio_no_change) == ("exp", True, False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of per_example= or aggregate="),
        ({"per_example": len, "aggregate": len}, "give exactly one of per_example= or aggregate="),
        ({"per_example": len, "ratio": len}, "ratio: only for aggregate= metrics"),
        ({"aggregate": len, "score_range": (0.0, 1.0)}, "score_range applies to per_example= metrics"),
    ],
)
def test_the_pre_split_constructor_refuses_what_has_no_kind(kwargs, message):
    with pytest.raises(TypeError, match=message) as exc:
        Metric("x", True, True, **kwargs)
    assert "\n" not in str(exc.value) and "'x'" in str(exc.value)


def test_ratio_forms_are_those_of_aggregates():
    o, t = _outputs(seed=1), _outputs(seed=2)
    assert ratio_of(m.ACCURACY, o, t) is None and ratio_of(pm.BRIER, o, t) is None
    assert ratio_of(pm.AUC, o, t) is None  # an aggregate without a ratio form
    r = ratio_of(m.PERPLEXITY, o, t)
    assert r is not None and r.transform == "exp" and r.den_fixed
    assert ratio_of(m.F1_MACRO, o, t).den_fixed is False  # F1's denominators count predictions
    assert ratio_of(m.BALANCED_ACCURACY, o, t).den_fixed is True


def test_records_are_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.ACCURACY.name = "other"  # type: ignore[misc]
    assert len({m.ACCURACY, m.F1_MACRO, pm.BRIER}) == 3
    assert pm.BRIER.score_range == (0.0, 2.0) and pm.ECE.sensitivity is pm.ece_sensitivity
