"""results.py: the typed kinds of a check's result, equal to the strings they replace (no torch)."""

from __future__ import annotations

import json
import pickle

import pytest

from pytest_forgetting import stats
from pytest_forgetting.results import CheckKind, Outcome, Verdict, gain_triple, min_gain, outcome_for


@pytest.mark.parametrize(
    "member, text",
    [
        (Verdict.PASS, "pass"),
        (Verdict.FAIL, "fail"),
        (Verdict.INCONCLUSIVE, "inconclusive"),
        (Verdict.ERROR, "error"),
        (Outcome.NONE, ""),
        (Outcome.PASSED, "passed"),
        (Outcome.WARNED, "warned"),
        (Outcome.FAILED, "failed"),
        (Outcome.ERROR, "error"),
        (CheckKind.RETAINS, "retains"),
        (CheckKind.IMPROVES, "improves"),
    ],
)
def test_members_are_their_strings(member, text):
    assert member == text and text == member and isinstance(member, str)
    assert str(member) == text and f"{member}" == text and f"{member:>14}" == f"{text:>14}" and "%s" % member == text
    assert hash(member) == hash(text) and {text: 1}[member] == 1 and {member: 1}[text] == 1
    assert json.dumps({"v": member}) == json.dumps({"v": text})
    assert pickle.loads(pickle.dumps(member)) is member
    assert type(member)(text) is member


def test_verdicts_are_the_decision_cores():
    assert {Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE} == {stats.PASS, stats.FAIL, stats.INCONCLUSIVE}


# what runner.enforce and api._assert did, each with its own if/else, before outcome_for
def _old_enforce(verdict, action):
    if verdict == "fail" or (verdict == "inconclusive" and action == "fail"):
        return "failed"
    if verdict == "inconclusive" and action == "warn":
        return "warned"
    return "passed"


def _old_assert(verdict, action):
    return (
        "failed"
        if verdict == "fail" or (verdict == "inconclusive" and action == "fail")
        else ("warned" if verdict == "inconclusive" and action == "warn" else "passed")
    )


@pytest.mark.parametrize("verdict", ["pass", "fail", "inconclusive"])
@pytest.mark.parametrize("action", ["fail", "warn", "pass"])
def test_outcome_for_is_both_old_mappings(verdict, action):
    got = outcome_for(verdict, action)
    assert isinstance(got, Outcome) and got == _old_enforce(verdict, action) == _old_assert(verdict, action)
    assert outcome_for(Verdict(verdict), action) is got


def test_outcome_table():
    assert outcome_for("pass", "fail") is Outcome.PASSED
    assert outcome_for("fail", "pass") is Outcome.FAILED
    assert outcome_for("inconclusive", "fail") is Outcome.FAILED
    assert outcome_for("inconclusive", "warn") is Outcome.WARNED
    assert outcome_for("inconclusive", "pass") is Outcome.PASSED


def test_gain_presentation():
    assert min_gain(-0.1) == 0.1 and min_gain(None) is None
    # drop -0.2 in [-0.3, -0.1] is a gain of 0.2 in [0.1, 0.3]
    assert gain_triple(-0.2, -0.3, -0.1) == (0.2, 0.1, 0.3)
    assert gain_triple(None, None, None) == (None, None, None)
    assert gain_triple(True, 1, -2)[0] is True  # a bool is not a number here (report.py's rule)


# --------------------------------------------------------------------------- CheckRow / ClassDrop

import dataclasses  # noqa: E402
import math  # noqa: E402

from pytest_forgetting.results import ABSENT, CheckRow, ClassDrop, Provenance  # noqa: E402


def _full_row() -> dict:
    """A row with every key a check can give (the session's skeleton, then everything added after it)."""
    return {
        "test": "tests/test_x.py::test_keeps[naive]",
        "task": "mnist",
        "split": "test",
        "metric": "accuracy",
        "kind": "retains",
        "candidate": "naive",
        "n": 1000,
        "base": 0.97,
        "tuned": 0.91,
        "drop": 0.06,
        "ci_low": 0.045,
        "ci_high": 0.075,
        "margin": 0.02,
        "relative": False,
        "nfr": 0.07,
        "verdict": "fail",
        "reason": "lower bound of the drop 0.045 > margin 0.020 (proven regression)",
        "n_needed": None,
        "worst_classes": [
            {"name": "7", "drop": 0.3, "ci_low": 0.2, "ci_high": 0.4, "verdict": "fail", "n": 100},
            {
                "name": "1",
                "metric": "precision",
                "drop": 0.1,
                "ci_low": 0.0,
                "ci_high": 0.2,
                "verdict": "",
                "n": 90,
                "n_tuned": 80,
                "base": 0.9,
                "tuned": 0.8,
            },
        ],
        "flipped_ids": ["a", 3],
        "base_cached": True,
        "base_eval_s": 0.0,
        "tuned_eval_s": 1.25,
        "base_reuse": "cache",
        "tuned_reuse": "computed",
        "higher_is_better": True,
        "bounded": True,
        "max_class_drop": 0.1,
        "max_nfr": None,
        "slices": None,
        "outcome": "failed",
        "max_gap_increase": 0.05,
        "class_metric": "precision",
        "fraction_used": 0.5,
        "weight_drift": [{"block": "fc", "rel": 0.1}],
        "representation_cka": None,
        "gap": {"best": "1", "worst": "7", "increase": 0.2, "verdict": "fail", "of": "class"},
        "examples": 3,
        "pytest_outcome": "failed",
        "_chance": [0.1, "10 classes"],
        "_device": "cpu",
        "_fingerprints": {"base.safetensors": "sha256:ab"},
    }


def _error_row() -> dict:
    """phases._error_row's keys: fewer than a row that ran (no reuse, bounded or budget keys)."""
    return {
        "test": "t",
        "task": "mnist",
        "split": "test",
        "metric": "-",
        "kind": "improves",
        "candidate": "",
        "n": 0,
        "base": None,
        "tuned": None,
        "drop": None,
        "ci_low": None,
        "ci_high": None,
        "margin": -0.1,
        "relative": False,
        "nfr": None,
        "verdict": "error",
        "reason": "boom",
        "n_needed": None,
        "worst_classes": [],
        "flipped_ids": [],
        "base_cached": False,
        "base_eval_s": 0.0,
        "tuned_eval_s": 0.0,
        "higher_is_better": True,
        "outcome": "error",
    }


def _channel(row) -> str:  # phases.attach_rows' encoding
    return json.dumps([{"index": 0, "row": row}], sort_keys=True)


@pytest.mark.parametrize("make", [_full_row, _error_row])
def test_row_round_trip_and_the_xdist_channel(make):
    data = make()
    row = CheckRow.from_json(data)
    assert isinstance(row.verdict, Verdict) and isinstance(row.kind, CheckKind)
    assert isinstance(row.outcome, Outcome)
    assert all(isinstance(c, ClassDrop) for c in row.worst_classes)
    # the mapping view is the dict it replaces: same keys (none added, none dropped), same values
    assert set(row) == set(data) and len(row) == len(data) and row == data and dict(row) == data
    assert json.loads(json.dumps(row.to_json())) == data
    assert _channel(row.to_json()) == _channel(data)  # byte for byte
    back = CheckRow.from_json(json.loads(_channel(row.to_json()))[0]["row"])
    assert back == row and back.to_json() == row.to_json()
    assert pickle.loads(pickle.dumps(row)) == row  # torch.distributed sends rows pickled


def test_absent_fields_are_missing_keys():
    row = CheckRow.from_dict(_error_row())
    assert row.bounded is ABSENT and "bounded" not in row and row.get("bounded", True) is True
    with pytest.raises(KeyError):
        row["base_reuse"]
    assert not ABSENT and pickle.loads(pickle.dumps(ABSENT)) is ABSENT
    assert row.get("nfr", 1) is None  # a present None stays None


def test_unknown_or_missing_keys_are_errors():
    with pytest.raises(ValueError, match="CheckRow has no field for 'surprise'"):
        CheckRow.from_dict({**_error_row(), "surprise": 1})
    data = _error_row()
    del data["verdict"]
    with pytest.raises(ValueError, match="verdict"):
        CheckRow.from_dict(data)
    with pytest.raises(ValueError):
        CheckRow.from_dict({**_error_row(), "verdict": "maybe"})
    with pytest.raises(ValueError, match="ClassDrop has no field for 'colour'"):
        CheckRow.from_dict(
            {
                **_error_row(),
                "worst_classes": [
                    {"name": "a", "drop": 0, "ci_low": 0, "ci_high": 0, "verdict": "", "n": 1, "colour": "red"}
                ],
            }
        )


def test_rows_are_frozen_and_change_by_replace():
    row = CheckRow.from_dict(_error_row())
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.outcome = Outcome.PASSED  # type: ignore[misc]
    with pytest.raises(TypeError):
        row["outcome"] = "passed"  # type: ignore[index]
    later = dataclasses.replace(row, outcome=Outcome.PASSED, examples=2)
    assert later["outcome"] == "passed" and later["examples"] == 2
    assert row["outcome"] == "error" and "examples" not in row


def test_public_drops_only_the_controllers_fields():
    row = CheckRow.from_dict(_full_row())
    public = row.public()
    assert set(row) - set(public) == {"_chance", "_device", "_fingerprints"}
    # what runner._public gave before
    assert dict(public) == {k: v for k, v in _full_row().items() if not k.startswith("_")}


def test_provenance_and_gain_views():
    row = CheckRow.from_dict(_full_row())
    assert row.provenance == Provenance(
        device="cpu",
        fingerprints={"base.safetensors": "sha256:ab"},
        base_reuse="cache",
        tuned_reuse="computed",
        base_cached=True,
        base_eval_s=0.0,
        tuned_eval_s=1.25,
    )
    imp = CheckRow.from_dict({**_error_row(), "drop": -0.2, "ci_low": -0.3, "ci_high": -0.1})
    assert imp.is_improves and not row.is_improves
    assert imp.gain == (0.2, 0.1, 0.3) and math.isclose(imp.min_gain, 0.1)


def test_the_reports_keys_are_fields():
    from pytest_forgetting import report

    keys = set(CheckRow.from_dict(_full_row()))
    assert set(report._ROW_KEYS) <= keys  # the JUnit order names no key a row cannot have
