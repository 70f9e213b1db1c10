"""The message of a failing or inconclusive check (:func:`failure_message`): its summary line, reason and classes.

An ``improves`` check is decided as a drop with margin ``-min_gain``; its message speaks in gains only
(:attr:`CheckRow.gain`, :attr:`CheckRow.min_gain`, and :func:`gain_triple` / :func:`min_gain` for the numbers of
the decision core's reason), never in the internal signed drops.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pytest_forgetting import escape
from pytest_forgetting.results import CheckRow, ClassDrop, Verdict, gain_triple, min_gain

from .format import (
    LABELS,
    NAME_LIMIT,
    POINTS,
    REASON_LIMIT,
    Row,
    as_class,
    as_row,
    delta_texts,
    finite,
    interval_text,
    margin_cell,
    margin_value_text,
    n_text,
    nfr_text,
    task_text,
    values_texts,
    verdict_of,
)

__all__ = ["failure_message"]


def _values_phrase(row: CheckRow) -> str:
    base, tuned = values_texts(row, [row.base, row.tuned])
    return f"base {base}, tuned {tuned}, n={n_text(row)}"


def _first_line(row: CheckRow) -> str:
    head = f"{task_text(row)} {escape.terminal(row.metric or '?', NAME_LIMIT)}"
    verdict = verdict_of(row)
    reason = _reason_text(row)
    if verdict == Verdict.ERROR or row.drop is None:
        return f"{head} could not be compared: {reason or 'no result'}"
    values = _values_phrase(row)
    margin = row.margin
    ci_low = row.ci_low

    if row.is_improves:
        gain = interval_text(row, *row.gain, signed=True)
        required = margin_cell(row).removeprefix("≥ ")
        if verdict == Verdict.PASS:
            return f"{head} gained {gain} > required {required} ({values})"
        if verdict == Verdict.INCONCLUSIVE:
            return f"{head} gain {gain} not clearly above required {required} ({values})"
        if finite(ci_low) and finite(margin) and float(ci_low) > float(margin):
            return f"{head} gain {gain} < required {required} ({values})"
        return f"{head} failed: {reason} ({values})"

    moved = "dropped" if row.higher_is_better else "rose"
    drop = interval_text(row, row.drop, ci_low, row.ci_high, signed=False)
    limit = margin_cell(row)
    if verdict == Verdict.PASS:
        return f"{head} kept: drop {drop} < margin {limit} ({values})"
    if verdict == Verdict.INCONCLUSIVE:
        return f"{head} inconclusive: drop {drop} straddles margin {limit} ({values})"
    if finite(ci_low) and finite(margin) and float(ci_low) > float(margin):
        return f"{head} {moved} {drop} > margin {limit} ({values})"
    return f"{head} failed: {reason or 'a budget was broken'} ({values})"


def _reason_text(row: CheckRow) -> str:
    reason = str(row.reason or "").strip()
    if row.is_improves:
        reason = _gain_reason(row, reason)
    return escape.terminal(reason, REASON_LIMIT)


# --------------------------------------------------------------------------- an improves reason in gains

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"


def _gain(row: CheckRow, value: Any) -> str:
    return margin_value_text(row, value, signed=True)


def _contains_phrase(row: CheckRow, m: re.Match) -> str:
    _, low, high = gain_triple(None, float(m[2]), float(m[3]))  # the drop's interval as the gain's
    return (
        f"gain {(m[1] or 'interval ').strip()} [{_gain(row, low)}, {_gain(row, high)}] {m[4] or ''}"
        f"contains the required {_gain(row, min_gain(float(m[5])))}"
    )


def _above_phrase(row: CheckRow, m: re.Match) -> str:
    _, low, _ = gain_triple(None, None, float(m[1]))  # the drop's upper bound is the gain's lower bound
    return f"lower bound of the gain {_gain(row, low)} > required {_gain(row, min_gain(float(m[2])))}"


def _below_phrase(row: CheckRow, m: re.Match) -> str:
    _, _, high = gain_triple(None, float(m[1]), None)  # the drop's lower bound is the gain's upper bound
    return (
        f"upper bound of the gain {_gain(row, high)} < required {_gain(row, min_gain(float(m[2])))} "
        "(proven: it gains less)"
    )


_DROP_PHRASES = (  # the decision core's wording in drops (positive = worse) -> the same in gains
    (
        re.compile(
            rf"^(confidence sequence |interval )?\[{_NUMBER}, {_NUMBER}\] (still )?contains the margin {_NUMBER}"
        ),
        _contains_phrase,
    ),
    (re.compile(rf"^upper bound of the drop {_NUMBER} < margin {_NUMBER}"), _above_phrase),
    (re.compile(rf"^lower bound of the drop {_NUMBER} > margin {_NUMBER} \(proven regression\)"), _below_phrase),
)


def _gain_reason(row: CheckRow, reason: str) -> str:
    """An ``improves`` reason in gains, never in the internal signed drops (``interval [-0.22, -0.05] ...``)."""
    for pattern, say in _DROP_PHRASES:
        m = pattern.match(reason)
        if m:
            return say(row, m) + reason[m.end() :]
    return reason


# --------------------------------------------------------------------------- the message


def _class_text(cls: ClassDrop) -> str:
    # a class's (or slice's) drop is always of a proportion -- its accuracy, or its precision with
    # class_metric="precision" -- whatever the check's metric, so it reads in points
    texts, unit = delta_texts(POINTS, [cls.drop, cls.ci_low, cls.ci_high], signed=True)
    out = f"{escape.terminal(cls.name, NAME_LIMIT)} {texts[0]}{unit}"
    if cls.ci_low is not None or cls.ci_high is not None:
        out += f" [{texts[1]}, {texts[2]}]"
    verdict = str(cls.verdict or "")
    if verdict:
        out += f" {LABELS.get(verdict.lower(), escape.terminal(verdict.upper(), NAME_LIMIT))}"
    return out


def _worst_first(cls: ClassDrop) -> tuple[float, str]:
    return (-float(cls.drop) if finite(cls.drop) else math.inf, str(cls.name))


def failure_message(row: Row, *, max_classes: int = 3, max_ids: int = 5) -> str:
    """The message of a failing or inconclusive check; its first line is a one-line summary.

    Each line is one line of the output: every name, id and reason in it is escaped.
    """
    row = as_row(row)
    lines = [_first_line(row)]
    verdict = verdict_of(row)
    reason = _reason_text(row)
    lines.append(f"  verdict:  {LABELS[verdict]}" + (f" - {reason}" if reason else ""))
    if row.drop is not None:
        limit = margin_cell(row)
        if row.is_improves:
            gain = interval_text(row, *row.gain, signed=True)
            lines.append(f"  gain:     {gain} (interval), required {limit.removeprefix('≥ ')}")
        else:
            drop = interval_text(row, row.drop, row.ci_low, row.ci_high, signed=True)
            lines.append(f"  drop:     {drop} (interval; positive = worse), margin {limit}")
    direction = "higher" if row.higher_is_better else "lower"
    lines.append(
        f"  values:   {_values_phrase(row)} paired examples "
        f"({escape.terminal(row.metric or '?', NAME_LIMIT)}, {direction} is better)"
    )
    if row.nfr is not None:
        lines.append(f"  NFR:      {nfr_text(row)} of examples flipped from right (base) to wrong (tuned)")
    if verdict == Verdict.INCONCLUSIVE and row.n_needed:
        lines.append(f"  settle:   about {int(row.n_needed):,} examples would settle it (n={n_text(row)} now)")
    classes = sorted((as_class(c) for c in (row.worst_classes or []) if isinstance(c, Mapping)), key=_worst_first)
    if classes:
        if row.class_metric == "precision":  # class_budget.py
            of = " precision"
        else:  # per-class accuracy: named when the check's own metric is another one
            of = "" if str(row.metric or "accuracy") == "accuracy" else " accuracy"
        lines.append(f"  classes:  worst{of} " + "; ".join(_class_text(c) for c in classes[:max_classes]))
    ids = [escape.terminal(i, NAME_LIMIT) for i in (row.flipped_ids or [])]
    if ids:
        more = f" (+{len(ids) - max_ids} more)" if len(ids) > max_ids else ""
        lines.append(f"  flipped:  {', '.join(ids[:max_ids])}{more}")
    drift_rows = row.weight_drift
    if isinstance(drift_rows, list) and drift_rows:  # where the weights moved (drift.py)
        from pytest_forgetting.drift import most_change_text

        lines.append(f"  weights:  most change: {escape.terminal(most_change_text(drift_rows), 300)}")
    if row.candidate:
        lines.append(f"  candidate: {escape.terminal(row.candidate, NAME_LIMIT)}")
    return "\n".join(lines)
