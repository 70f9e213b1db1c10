"""Check.kind is a results.CheckKind (issue 15): equal to, printed and JSON-encoded as the plain string it
replaces, with one presentation of an ``improves`` check's gain (results.min_gain / gain_triple). No torch."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from pytest_forgetting import report
from pytest_forgetting.checks import Check, parse_check
from pytest_forgetting.engine.decision import row_skeleton
from pytest_forgetting.finetune.strategies.wise_ft import format_curve
from pytest_forgetting.metrics import ACCURACY, NLL
from pytest_forgetting.results import CheckKind, CheckRow

RETAINS = {"task": "digits", "max_drop": 0.02}
IMPROVES = {"task": "digits", "min_gain": 0.05}
CASES = [
    ("retains", RETAINS, CheckKind.RETAINS),
    ("improves", IMPROVES, CheckKind.IMPROVES),
    ("retains", {**RETAINS, "metric": "f1_macro", "max_class_drop": 0.1}, CheckKind.RETAINS),
    ("improves", {**IMPROVES, "metric": "balanced_accuracy", "relative": True}, CheckKind.IMPROVES),
]


def _as_before(check: Check) -> Check:
    """The same check with the plain-string kind that parse_check built before CheckKind."""
    return dataclasses.replace(check, kind=str(check.kind))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind, kwargs, member", CASES)
def test_parse_check_builds_checkkind_members(kind, kwargs, member):
    check = parse_check(kind, kwargs, "here")
    assert check.kind is member and isinstance(check.kind, CheckKind) and isinstance(check.kind, str)
    assert check.kind == kind and kind == check.kind and str(check.kind) == kind and f"{check.kind}" == kind
    assert type(str(check.kind)) is str
    assert hash(check) == hash(_as_before(check)) and check == _as_before(check)


@pytest.mark.parametrize("kind, kwargs, member", CASES)
def test_label_repr_and_to_dict_are_the_string_forms(kind, kwargs, member):
    check = parse_check(kind, kwargs, "here")
    before = _as_before(check)
    assert check.label == before.label and check.label.startswith(f"{kind}[digits")
    assert repr(check) == repr(before)
    d = check.to_dict()
    assert d == before.to_dict() and list(d) == list(before.to_dict())
    assert type(d["kind"]) is str and d["kind"] == kind  # plain values, as before
    assert json.dumps(d, sort_keys=True) == json.dumps(before.to_dict(), sort_keys=True)
    assert json.dumps(dataclasses.asdict(check)) == json.dumps(dataclasses.asdict(before))
    assert pickle.loads(pickle.dumps(check)) == check


def test_min_gain_is_the_read_only_view_of_the_margin():
    retains = parse_check("retains", RETAINS, "here")
    improves = parse_check("improves", IMPROVES, "here")
    assert retains.min_gain is None and retains.margin == 0.02
    assert improves.min_gain == 0.05 and improves.margin == -0.05  # the decision core's signed margin is unchanged
    assert type(improves.min_gain) is float
    zero = parse_check("improves", {"task": "digits", "min_gain": 0}, "here")
    assert zero.min_gain == 0.0 and zero.margin == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        improves.min_gain = 0.1  # type: ignore[misc]
    assert "min_gain" not in improves.to_dict()  # a view, not a field


def _rows(check: Check, metric=ACCURACY):
    row = row_skeleton(check, metric, "tests/test_m.py::test_x", "")
    row.update(n=500, base=0.9, tuned=0.95, drop=-0.05, ci_low=-0.08, ci_high=-0.02, verdict="pass", outcome="passed")
    return row


@pytest.mark.parametrize("kind, kwargs, member", CASES)
@pytest.mark.parametrize("metric", [ACCURACY, NLL])
def test_report_fields_are_byte_identical(kind, kwargs, member, metric):
    check = parse_check(kind, kwargs, "here")
    new, old = _rows(check, metric), _rows(_as_before(check), metric)
    assert type(old["kind"]) is str and new["kind"] is member
    header = {"alpha": 0.05}
    assert report.dumps_json(header, [new]) == report.dumps_json(header, [old])
    assert report.dumps_json(header, [CheckRow.from_dict(new)]) == report.dumps_json(header, [old])
    assert json.loads(report.dumps_json(header, [new]))["rows"][0]["kind"] == kind
    assert report.format_table([new], alpha=0.05, width=160) == report.format_table([old], alpha=0.05, width=160)
    assert report.format_markdown(header, [new]) == report.format_markdown(header, [old])
    assert report.junit_properties(new) == report.junit_properties(old)
    assert report.failure_message(new) == report.failure_message(old)
    assert CheckRow.from_dict(new).to_json() == CheckRow.from_dict(old).to_json()
    assert type(CheckRow.from_dict(new).to_json()["kind"]) is str


def _format_curve_before(curve, chosen=None):
    """format_curve as it was before results.gain_triple (the sign undone by hand), for the comparison."""
    head = "wise_ft: largest alpha whose model meets every keep check"
    lines = [head + (f" -> alpha={chosen:g}" if chosen is not None else "")]
    for p in curve:
        parts = []
        for c in p["checks"]:
            if c["drop"] is None:
                parts.append(f"{c['task']} {c['verdict'].upper()}")
                continue
            sign = "drop" if c["kind"] == "retains" else "gain"
            value = c["drop"] if c["kind"] == "retains" else -c["drop"]
            lo, hi = (c["ci_low"], c["ci_high"]) if c["kind"] == "retains" else (-c["ci_high"], -c["ci_low"])
            parts.append(
                f"{c['task']} {sign} {100 * value:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] {c['verdict'].upper()}"
            )
        if "gain" in p and p["gain"]["gain"] is not None:
            parts.append(f"{p['gain']['task']} gain {100 * p['gain']['gain']:+.1f} pp")
        mark = "*" if chosen is not None and p["alpha"] == chosen else " "
        lines.append(f" {mark} alpha={p['alpha']:.2f}  " + "; ".join(parts))
    return lines


def _point(alpha, kind, drop, lo, hi, verdict="pass"):
    checks = [
        {"task": "mnist", "kind": CheckKind.RETAINS, "drop": 0.004, "ci_low": -0.01, "ci_high": 0.018,
         "verdict": "pass"},
        {"task": "digits", "kind": kind, "drop": drop, "ci_low": lo, "ci_high": hi, "verdict": verdict},
        {"task": "fashion", "kind": kind, "drop": None, "ci_low": None, "ci_high": None, "verdict": "error"},
    ]  # fmt: skip
    return {"alpha": alpha, "checks": checks, "gain": {"task": "digits-28", "gain": 0.12}, "ok": verdict == "pass"}


@pytest.mark.parametrize("kind", [CheckKind.IMPROVES, "improves", CheckKind.RETAINS, "retains"])
def test_wise_ft_curve_row_of_an_improves_check_keeps_its_gain_and_interval(kind):
    import numpy as np

    curve = [
        _point(0.25, kind, -0.061, -0.083, -0.039),
        _point(0.5, kind, np.float64(-0.0125), np.float64(-0.031), np.float64(0.006), "inconclusive"),
        _point(0.75, kind, 0.02, 0.004, 0.036, "fail"),
    ]
    for chosen in (0.25, None):
        assert format_curve(curve, chosen) == _format_curve_before(curve, chosen)
    lines = format_curve(curve, 0.25)
    if kind == "improves":  # the gain is the negated drop, its interval the drop's ends negated and swapped
        assert "digits gain +6.1 pp [+3.9, +8.3] PASS" in lines[1]
        assert "digits gain +1.2 pp [-0.6, +3.1] INCONCLUSIVE" in lines[2]
        assert "digits gain -2.0 pp [-3.6, -0.4] FAIL" in lines[3]
    else:
        assert "digits drop -6.1 pp [-8.3, -3.9] PASS" in lines[1]
    assert lines[1].startswith(" * alpha=0.25  mnist drop +0.4 pp [-1.0, +1.8] PASS;")
    assert lines[1].endswith("fashion ERROR; digits-28 gain +12.0 pp")
