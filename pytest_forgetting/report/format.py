"""Reports of a forgetting run: terminal table, failure messages, JSON, Markdown, PNG, JUnit.

Everything here works on plain, JSON-serialisable *rows* (one per marker or check), so the
same functions serve a single process and the pytest-xdist controller, which receives the
rows from its workers in whatever order they finish. Every report sorts the rows first
(:func:`sort_rows`), which is what makes the output identical with and without xdist.

A row is a :class:`pytest_forgetting.results.CheckRow` (whose docstring lists every field and
when it is present), read here through its mapping view, or any mapping with the same keys: the
functions take plain dicts too, and tolerate missing or odd values (an unknown verdict reads ERROR).
A *drop* is signed so that positive means worse; for ``improves`` rows the gain is
``-drop`` and the margin is ``-min_gain``.

Every string of a row that a checkpoint, a data file or a pull request can choose (test ids,
task, split, metric, class and candidate names, example ids, reasons) goes through
:mod:`pytest_forgetting.escape` on its way into the terminal, Markdown, the PNG and the JUnit
properties; the JSON report keeps the raw values.

No heavy imports: this module is loaded with the plugin, in every pytest run. matplotlib is
imported inside :func:`write_plot` only.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_forgetting import escape
from pytest_forgetting._util import atomic_write
from pytest_forgetting.errors import ConfigError
from pytest_forgetting.results import CheckKind, gain_triple, min_gain

__all__ = [
    "build_json",
    "dumps_json",
    "failure_message",
    "format_markdown",
    "format_table",
    "junit_properties",
    "sort_rows",
    "summary_counts",
    "write_json",
    "write_markdown",
    "write_plot",
]

Row = Mapping[str, Any]

VERDICTS = ("pass", "fail", "inconclusive", "error")
_LABELS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "error": "ERROR"}
_PAST = {"pass": "passed", "fail": "failed", "inconclusive": "inconclusive", "error": "error"}
_ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "error": "❗"}
_DASH = "—"
_ELLIPSIS = "…"
# caps on untrusted text in messages: a name is shown up to this many characters, a reason up to
# _REASON_LIMIT (a checkpoint cannot flood the terminal or the job summary)
_NAME_LIMIT = 120
_REASON_LIMIT = 2000

# The order of the JUnit properties (and the order a reader expects); other keys follow, sorted.
_ROW_KEYS = (
    "test", "candidate", "task", "split", "metric", "kind", "n", "base", "tuned", "drop",
    "ci_low", "ci_high", "margin", "relative", "bounded", "higher_is_better", "nfr", "verdict",
    "reason", "n_needed", "outcome", "worst_classes", "flipped_ids", "base_cached",
    "base_eval_s", "tuned_eval_s",
)


# --------------------------------------------------------------------------- ordering, counts


def _float_key(value: Any) -> tuple[int, float]:
    # NaN breaks sorting (every comparison is False), so it gets a slot of its own.
    if not _is_number(value):
        return (2, 0.0)
    value = float(value)
    if math.isnan(value):
        return (1, 0.0)
    return (0, value)


def _sort_key(row: Row) -> tuple:
    return (
        str(row.get("candidate") or ""),
        str(row.get("test") or ""),
        str(row.get("task") or ""),
        str(row.get("split") or ""),
        str(row.get("metric") or ""),
        str(row.get("kind") or ""),
        bool(row.get("relative")),
        _float_key(row.get("margin")),
        str(row.get("verdict") or ""),
    )


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """The rows in report order: by candidate, then test node id, then task and metric.

    The order does not depend on the order the rows arrived in (xdist workers finish in any
    order), so every report built from the same rows is the same.
    """
    return sorted(rows, key=_sort_key)


def summary_counts(rows: Iterable[Row]) -> dict[str, int]:
    """``{"checks": N, "pass": .., "fail": .., "inconclusive": .., "error": ..}``."""
    counts = Counter(_verdict(r) for r in rows)
    out = {"checks": sum(counts.values())}
    for verdict in VERDICTS:
        out[verdict] = counts.get(verdict, 0)
    return out


def _verdict(row: Row) -> str:
    verdict = str(row.get("verdict") or "error").lower()
    return verdict if verdict in _LABELS else "error"


def _candidates(rows: Iterable[Row]) -> list[str]:
    """The tuned candidates of the rows. With named candidates, rows of models a test built itself
    (``finetune`` results, modules: candidate "") are not one more candidate."""
    names = sorted({str(r.get("candidate") or "") for r in rows})
    named = [n for n in names if n]
    return named or names


def _counts_phrase(rows: list[Row]) -> str:
    counts = summary_counts(rows)
    checks = counts["checks"]
    parts = [f"{checks} check{'s' if checks != 1 else ''}"]
    candidates = _candidates(rows)
    if len(candidates) > 1:
        parts[0] += f" on {len(candidates)} candidates"
    for verdict in VERDICTS:
        if counts[verdict]:
            word = _PAST[verdict]
            if verdict == "error" and counts[verdict] > 1:
                word = "errors"
            parts.append(f"{counts[verdict]} {word}")
    return ", ".join(parts)


def _ci_percent(alpha: float) -> str:
    return f"{(1 - 2 * alpha) * 100:g}%"


# --------------------------------------------------------------------------- number formatting


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def _nonfinite_text(value: Any) -> str:
    if value is None or not _is_number(value):
        return _DASH
    value = float(value)
    if math.isnan(value):
        return "NaN"
    return "+inf" if value > 0 else "-inf"


def _sig_decimals(magnitude: float, sig: int = 3) -> int:
    """Decimals that show ``sig`` significant digits of a number of this magnitude."""
    if not magnitude or not math.isfinite(magnitude):
        return sig - 1
    return max(0, min(6, sig - 1 - math.floor(math.log10(abs(magnitude)))))


def _fixed(value: Any, decimals: int, *, signed: bool = False) -> str:
    if not _finite(value):
        return _nonfinite_text(value)
    text = f"{float(value):{'+' if signed else ''}.{decimals}f}"
    # "-0.0" after rounding says "worse by nothing" with the wrong sign.
    if text.lstrip("+-").strip("0.") == "":
        text = ("+" if signed else "") + text.lstrip("+-")
    return text


def _bounded(row: Row) -> bool:
    return bool(row.get("bounded", True))


def _is_improves(row: Row) -> bool:
    return str(row.get("kind") or CheckKind.RETAINS) == CheckKind.IMPROVES


def _delta_unit(row: Row) -> tuple[float, str]:
    """Scale and unit of drops and margins: relative %, percentage points, or metric units."""
    if row.get("relative"):
        return 100.0, "% rel"
    if _bounded(row):
        return 100.0, " pp"
    return 1.0, ""


def _delta_texts(row: Row, values: list[Any], *, signed: bool) -> tuple[list[str], str]:
    """Format drops (or gains, or margins) of one row with common decimals and its unit."""
    scale, unit = _delta_unit(row)
    if scale != 1.0:
        decimals = 1
    else:
        mags = [abs(float(v)) for v in values if _finite(v)]
        decimals = _sig_decimals(max(mags) if mags else 0.0)
    texts = [_fixed(float(v) * scale if _finite(v) else v, decimals, signed=signed) for v in values]
    return texts, unit


def _values_texts(row: Row, values: list[Any]) -> list[str]:
    """Format metric values (base, tuned): percent with one decimal, or 3 significant digits.

    Unbounded values get at least as many decimals as the row's drop, so that base and
    tuned visibly differ by the drop shown beside them (12.34 -> 13.15, drop +0.81).
    """
    if _bounded(row):
        return [
            f"{_fixed(float(v) * 100, 1)}%" if _finite(v) else _nonfinite_text(v) for v in values
        ]
    mags = [abs(float(v)) for v in values if _finite(v)]
    decimals = _sig_decimals(max(mags) if mags else 0.0)
    if not row.get("relative"):
        drops = [abs(float(row[k])) for k in ("drop", "ci_low", "ci_high") if _finite(row.get(k))]
        if drops:
            decimals = max(decimals, min(4, _sig_decimals(max(drops))))
    return [_fixed(v, decimals) for v in values]


def _trim_zeros(text: str) -> str:
    if "." in text and text[-1:].isdigit():
        text = text.rstrip("0").rstrip(".")
    return text


def _margin_value_text(row: Row, value: Any, *, signed: bool) -> str:
    [text], unit = _delta_texts(row, [value], signed=signed)
    if _delta_unit(row)[0] == 1.0:
        text = _trim_zeros(text)
    return text + unit


def _gain_triple(row: Row) -> tuple[Any, Any, Any]:
    """Gain and its interval of an improves row (the negated drop, ends swapped)."""
    return gain_triple(row.get("drop"), row.get("ci_low"), row.get("ci_high"))


def _interval_text(row: Row, value: Any, lo: Any, hi: Any, *, signed: bool) -> str:
    texts, unit = _delta_texts(row, [value, lo, hi], signed=signed)
    out = f"{texts[0]}{unit}"
    if lo is not None or hi is not None:
        out += f" [{texts[1]}, {texts[2]}]"
    return out


def _drop_cell(row: Row) -> str:
    if row.get("drop") is None:
        return _DASH
    if _is_improves(row):
        return "gain " + _interval_text(row, *_gain_triple(row), signed=True)
    return _interval_text(row, row.get("drop"), row.get("ci_low"), row.get("ci_high"), signed=True)


def _margin_cell(row: Row) -> str:
    margin = row.get("margin")
    if margin is None:
        return _DASH
    if _is_improves(row):
        return "≥ " + _margin_value_text(row, min_gain(margin), signed=True)
    return _margin_value_text(row, margin, signed=False)


def _nfr_text(row: Row) -> str:
    nfr = row.get("nfr")
    if nfr is None:
        return _DASH
    return f"{_fixed(float(nfr) * 100, 1)}%" if _finite(nfr) else _nonfinite_text(nfr)


def _n_text(row: Row) -> str:
    n = row.get("n")
    return _DASH if n is None else str(n)


def _task_text(row: Row, *, default_split: str | None = None) -> str:
    """``task/split``; just ``task`` when the split is ``default_split`` (saves table width)."""
    task = escape.terminal(row.get("task") or "?", _NAME_LIMIT)
    split = row.get("split")
    if split and split != default_split:
        return f"{task}/{escape.terminal(split, _NAME_LIMIT)}"
    return task


def _verdict_text(row: Row) -> str:
    text = _LABELS[_verdict(row)]
    if _soft_inconclusive(row):
        text += "*"
    return text


def _soft_inconclusive(row: Row) -> bool:
    """An INCONCLUSIVE verdict that did not fail its test (--forgetting-inconclusive warn|pass)."""
    return _verdict(row) == "inconclusive" and row.get("outcome") in ("passed", "warned")


# --------------------------------------------------------------------------- test names


def _short_names(nodeids: Iterable[str]) -> dict[str, str]:
    """Node ids without their file path, unless two tests would then read the same."""
    unique = sorted(set(nodeids))

    def without_path(nodeid: str) -> str:
        return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid

    def with_basename(nodeid: str) -> str:
        if "::" not in nodeid:
            return nodeid
        path, rest = nodeid.split("::", 1)
        return f"{path.rsplit('/', 1)[-1]}::{rest}"

    out: dict[str, str] = {}
    remaining = unique
    for shorten in (without_path, with_basename):
        names = {n: shorten(n) for n in remaining}
        clashes = Counter(names.values())
        out.update((n, name) for n, name in names.items() if clashes[name] == 1)
        remaining = [n for n in remaining if n not in out]
    out.update((n, n) for n in remaining)
    return out


def _without_candidate(test: str, candidate: str) -> str:
    """A test name without the candidate's own parameter id (``test_x[naive]``, ``retains:mnist@naive``)."""
    if not candidate:
        return test
    if test.endswith(f"@{candidate}"):
        return test[: -len(candidate) - 1]
    if test.endswith("]") and "[" in test:
        head, _, params = test[:-1].partition("[")
        parts = params.split("-")
        if candidate in parts:  # (a candidate name with a '-' stays: the id cannot be split safely)
            parts.remove(candidate)
            return f"{head}[{'-'.join(parts)}]" if parts else head
        if params == candidate:
            return head
    return test


def _truncate_left(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return _ELLIPSIS[:width]
    return _ELLIPSIS + text[-(width - 1):]


# --------------------------------------------------------------------------- terminal table

_COLUMNS = ("test", "task", "metric", "n", "base", "tuned", "drop [CI]", "margin", "NFR", "verdict")
_RIGHT = frozenset({3, 4, 5, 6, 7, 8})
_SEP = "  "
_DEFAULT_WIDTH = 120
_MIN_TEST_WIDTH = 16
_DEFAULT_SPLIT = "test"  # the markers' default split, left out of the table's task column


def _row_cells(row: Row, short: Mapping[str, str]) -> list[str]:
    base, tuned = _values_texts(row, [row.get("base"), row.get("tuned")])
    test = str(row.get("test") or "")
    examples = row.get("examples")  # a Hypothesis test: the worst of its examples
    return [
        escape.terminal(short.get(test, test)) + (f" (worst of {examples})" if examples else ""),
        _task_text(row, default_split=_DEFAULT_SPLIT),
        escape.terminal(row.get("metric") or "?", _NAME_LIMIT),
        _n_text(row),
        base,
        tuned,
        _drop_cell(row),
        _margin_cell(row),
        _nfr_text(row),
        _verdict_text(row),
    ]


def format_table(rows: Iterable[Row], *, alpha: float, width: int | None = None) -> list[str]:
    """The end-of-run table, as lines without newlines; ``[]`` when there are no rows.

    ``width`` is the terminal width to fit (default 120): only the test column shrinks,
    truncated from the left so that the test function's name stays visible.
    """
    rows = sort_rows(rows)
    if not rows:
        return []
    candidates = _candidates(rows)
    several = len(candidates) > 1
    short = _short_names(str(r.get("test") or "") for r in rows)
    cells = [_row_cells(r, short) for r in rows]

    widths = [max(len(_COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(len(_COLUMNS))]
    others = sum(widths[1:]) + len(_SEP) * (len(_COLUMNS) - 1)
    room = (width or _DEFAULT_WIDTH) - others
    widths[0] = max(_MIN_TEST_WIDTH, len(_COLUMNS[0]), min(widths[0], room))

    def render(values: list[str]) -> str:
        out = []
        for i, value in enumerate(values):
            if i == 0:
                value = _truncate_left(value, widths[0])
            out.append(value.rjust(widths[i]) if i in _RIGHT else value.ljust(widths[i]))
        return _SEP.join(out).rstrip()

    lines = [f"forgetting: {_counts_phrase(rows)} (alpha={alpha:g}, one-sided)"]
    lines.append(render(list(_COLUMNS)))
    lines.append(render(["-" * w for w in widths]))
    current = None
    for row, row_cells in zip(rows, cells):
        candidate = str(row.get("candidate") or "")
        if several and candidate != current:
            current = candidate
            lines.append(f"candidate {escape.terminal(candidate, _NAME_LIMIT)}:" if candidate else "models built by the tests (no candidate):")
        lines.append(render(row_cells))

    lines.append(
        f"drop > 0 is worse; [..] = two-sided {_ci_percent(alpha)} interval, its ends the "
        f"one-sided bounds at alpha={alpha:g}"
    )
    if any(_soft_inconclusive(r) for r in rows):
        lines.append("* INCONCLUSIVE that did not fail its test (--forgetting-inconclusive)")
    if several:
        lines.append("ranking:")
        lines.extend("  " + line for line in _ranking_lines(rows))
    return lines


def _ranking_lines(rows: list[Row], esc: Any = escape.terminal) -> list[str]:
    """One line per task: who passes every check on it, and the best gain on improves tasks.

    ``esc`` escapes the task and candidate names for the output (terminal or Markdown).
    """
    by_task: dict[str, list[Row]] = {}
    for row in [r for r in rows if r.get("candidate")] or rows:  # models the tests built rank nowhere
        by_task.setdefault(str(row.get("task") or "?"), []).append(row)
    lines = []
    for task in sorted(by_task):
        task_rows = by_task[task]
        passing, not_passing = [], []
        for candidate in _candidates(task_rows):
            mine = [r for r in task_rows if str(r.get("candidate") or "") == candidate]
            bad = sum(_verdict(r) != "pass" for r in mine)
            name = esc(candidate, _NAME_LIMIT) if candidate else "(unnamed)"
            if bad:
                not_passing.append(f"{name} ({bad}/{len(mine)} not passed)")
            else:
                passing.append(name)
        name = esc(task, _NAME_LIMIT)
        if passing:
            line = f"{name}: every check passed by {', '.join(passing)}"
        else:
            line = f"{name}: no candidate passes every check"
        if not_passing:
            line += f"; not by {', '.join(not_passing)}"
        line += _best_gain_phrase(task_rows, esc)
        lines.append(line)
    overall = _overall_line([r for r in rows if r.get("candidate")] or rows, esc)
    if overall:
        lines.append(overall)
    return lines


def _overall_line(rows: list[Row], esc: Any = escape.terminal) -> str:
    """When no candidate passes every check: the closest across tasks (fewest not passed, then the smallest share)."""
    names = _candidates(rows)
    if len(names) < 2:
        return ""
    counts = {}
    for candidate in names:
        mine = [r for r in rows if str(r.get("candidate") or "") == candidate]
        counts[candidate] = (sum(_verdict(r) != "pass" for r in mine), len(mine))
    shown = {c: esc(c, _NAME_LIMIT) if c else "(unnamed)" for c in names}
    if any(bad == 0 for bad, _ in counts.values()):
        return ""  # the task lines name who passes every check
    key = {c: (bad, bad / total) for c, (bad, total) in counts.items()}  # fewest not passed, then the smallest share
    best = min(key.values())
    closest = [f"{shown[c]} ({counts[c][0]}/{counts[c][1]} not passed)" for c in names if key[c] == best]
    return f"overall: no candidate passes every check; closest: {', '.join(closest)}"


def _best_gain_phrase(task_rows: list[Row], esc: Any = escape.terminal) -> str:
    improves = [r for r in task_rows if _is_improves(r) and _finite(r.get("drop"))]
    if not improves:
        return ""
    # Gains are only comparable in the same metric and unit.
    groups: dict[tuple[str, bool], list[Row]] = {}
    for row in improves:
        key = (str(row.get("metric") or "?"), bool(row.get("relative")))
        groups.setdefault(key, []).append(row)
    parts = []
    for (metric, _), group in sorted(groups.items()):
        best = min(group, key=lambda r: (float(r["drop"]), str(r.get("candidate") or "")))
        gain = _margin_value_text(best, -float(best["drop"]), signed=True)
        label = f" {esc(metric, _NAME_LIMIT)}" if len(groups) > 1 else ""
        name = esc(best.get("candidate"), _NAME_LIMIT) if best.get("candidate") else "(unnamed)"
        parts.append(f"best gain{label} {name} {gain}")
    return "; " + "; ".join(parts)


# --------------------------------------------------------------------------- failure message


def _values_phrase(row: Row) -> str:
    base, tuned = _values_texts(row, [row.get("base"), row.get("tuned")])
    return f"base {base}, tuned {tuned}, n={_n_text(row)}"


def _first_line(row: Row) -> str:
    head = f"{_task_text(row)} {escape.terminal(row.get('metric') or '?', _NAME_LIMIT)}"
    verdict = _verdict(row)
    reason = _reason_text(row)
    if verdict == "error" or row.get("drop") is None:
        return f"{head} could not be compared: {reason or 'no result'}"
    values = _values_phrase(row)
    margin = row.get("margin")
    ci_low = row.get("ci_low")

    if _is_improves(row):
        gain = _interval_text(row, *_gain_triple(row), signed=True)
        required = _margin_cell(row).removeprefix("≥ ")
        if verdict == "pass":
            return f"{head} gained {gain} > required {required} ({values})"
        if verdict == "inconclusive":
            return f"{head} gain {gain} not clearly above required {required} ({values})"
        if _finite(ci_low) and _finite(margin) and float(ci_low) > float(margin):
            return f"{head} gain {gain} < required {required} ({values})"
        return f"{head} failed: {reason} ({values})"

    moved = "dropped" if row.get("higher_is_better", True) else "rose"
    drop = _interval_text(row, row.get("drop"), ci_low, row.get("ci_high"), signed=False)
    limit = _margin_cell(row)
    if verdict == "pass":
        return f"{head} kept: drop {drop} < margin {limit} ({values})"
    if verdict == "inconclusive":
        return f"{head} inconclusive: drop {drop} straddles margin {limit} ({values})"
    if _finite(ci_low) and _finite(margin) and float(ci_low) > float(margin):
        return f"{head} {moved} {drop} > margin {limit} ({values})"
    return f"{head} failed: {reason or 'a budget was broken'} ({values})"


def _reason_text(row: Row) -> str:
    reason = str(row.get("reason") or "").strip()
    if _is_improves(row):
        reason = _gain_reason(row, reason)
    return escape.terminal(reason, _REASON_LIMIT)


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"
_DROP_PHRASES = (  # the decision core's wording in drops (positive = worse) -> the same in gains
    (re.compile(rf"^(confidence sequence |interval )?\[{_NUMBER}, {_NUMBER}\] (still )?contains the margin {_NUMBER}"),
     lambda row, m: f"gain {(m[1] or 'interval ').strip()} [{_g(row, m[3])}, {_g(row, m[2])}] {m[4] or ''}contains the required "
                    f"{_g(row, m[5])}"),
    (re.compile(rf"^upper bound of the drop {_NUMBER} < margin {_NUMBER}"),
     lambda row, m: f"lower bound of the gain {_g(row, m[1])} > required {_g(row, m[2])}"),
    (re.compile(rf"^lower bound of the drop {_NUMBER} > margin {_NUMBER} \(proven regression\)"),
     lambda row, m: f"upper bound of the gain {_g(row, m[1])} < required {_g(row, m[2])} (proven: it gains less)"),
)


def _g(row: Row, drop_text: str) -> str:
    return _margin_value_text(row, -float(drop_text), signed=True)


def _gain_reason(row: Row, reason: str) -> str:
    """An ``improves`` reason in gains, never in the internal signed drops (``interval [-0.22, -0.05] ...``)."""
    for pattern, say in _DROP_PHRASES:
        m = pattern.match(reason)
        if m:
            return say(row, m) + reason[m.end():]
    return reason


def _class_text(row: Row, cls: Mapping[str, Any]) -> str:
    # a class's (or slice's) drop is always of a proportion -- its accuracy, or its precision with
    # class_metric="precision" -- whatever the check's metric, so it reads in points
    texts, unit = _delta_texts(
        {"bounded": True}, [cls.get("drop"), cls.get("ci_low"), cls.get("ci_high")],
        signed=True,
    )
    out = f"{escape.terminal(cls.get('name'), _NAME_LIMIT)} {texts[0]}{unit}"
    if cls.get("ci_low") is not None or cls.get("ci_high") is not None:
        out += f" [{texts[1]}, {texts[2]}]"
    verdict = str(cls.get("verdict") or "")
    if verdict:
        out += f" {_LABELS.get(verdict.lower(), escape.terminal(verdict.upper(), _NAME_LIMIT))}"
    return out


def failure_message(row: Row, *, max_classes: int = 3, max_ids: int = 5) -> str:
    """The message of a failing or inconclusive check; its first line is a one-line summary.

    Each line is one line of the output: every name, id and reason in it is escaped.
    """
    lines = [_first_line(row)]
    verdict = _verdict(row)
    reason = _reason_text(row)
    lines.append(f"  verdict:  {_LABELS[verdict]}" + (f" - {reason}" if reason else ""))
    if row.get("drop") is not None:
        drop = _interval_text(row, row.get("drop"), row.get("ci_low"), row.get("ci_high"),
                              signed=True)
        limit = _margin_cell(row)
        if _is_improves(row):
            gain = _interval_text(row, *_gain_triple(row), signed=True)
            lines.append(f"  gain:     {gain} (interval), required {limit.removeprefix('≥ ')}")
        else:
            lines.append(f"  drop:     {drop} (interval; positive = worse), margin {limit}")
    direction = "higher" if row.get("higher_is_better", True) else "lower"
    lines.append(
        f"  values:   {_values_phrase(row)} paired examples "
        f"({escape.terminal(row.get('metric') or '?', _NAME_LIMIT)}, {direction} is better)"
    )
    if row.get("nfr") is not None:
        lines.append(f"  NFR:      {_nfr_text(row)} of examples flipped from right (base) "
                     "to wrong (tuned)")
    if verdict == "inconclusive" and row.get("n_needed"):
        lines.append(f"  settle:   about {int(row['n_needed']):,} examples would settle it "
                     f"(n={_n_text(row)} now)")
    classes = [c for c in (row.get("worst_classes") or []) if isinstance(c, Mapping)]
    if classes:
        def worst_first(cls: Mapping[str, Any]) -> tuple[float, str]:
            drop = cls.get("drop")
            return (-float(drop) if _finite(drop) else math.inf, str(cls.get("name")))

        classes = sorted(classes, key=worst_first)
        if row.get("class_metric") == "precision":  # class_budget.py
            of = " precision"
        else:  # per-class accuracy: named when the check's own metric is another one
            of = "" if str(row.get("metric") or "accuracy") == "accuracy" else " accuracy"
        lines.append(f"  classes:  worst{of} " + "; ".join(
            _class_text(row, c) for c in classes[:max_classes]))
    ids = [escape.terminal(i, _NAME_LIMIT) for i in (row.get("flipped_ids") or [])]
    if ids:
        more = f" (+{len(ids) - max_ids} more)" if len(ids) > max_ids else ""
        lines.append(f"  flipped:  {', '.join(ids[:max_ids])}{more}")
    drift_rows = row.get("weight_drift")
    if isinstance(drift_rows, list) and drift_rows:  # where the weights moved (drift.py)
        from .drift import most_change_text

        lines.append(f"  weights:  most change: {escape.terminal(most_change_text(drift_rows), 300)}")
    if row.get("candidate"):
        lines.append(f"  candidate: {escape.terminal(row['candidate'], _NAME_LIMIT)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- JSON


def _plain(value: Any) -> Any:
    """A JSON-ready copy: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


def build_json(header: Mapping[str, Any], rows: Iterable[Row]) -> dict[str, Any]:
    """The JSON report: the header's keys, ``rows`` (in table order) and ``summary`` counts."""
    rows = sort_rows(rows)
    summary: dict[str, Any] = summary_counts(rows)
    summary["by_candidate"] = {
        c: summary_counts(r for r in rows if str(r.get("candidate") or "") == c)
        for c in _candidates(rows)
    }
    report = _plain(dict(header))
    report["rows"] = [_plain(dict(r)) for r in rows]
    report["summary"] = summary
    return report


def _atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of it."""
    # a report is meant to be read by others: 0644 whatever the umask
    atomic_write(path, data, fsync=True, chmod=0o644)


def dumps_json(header: Mapping[str, Any], rows: Iterable[Row]) -> str:
    """The JSON report as text: same input, same bytes."""
    report = build_json(header, rows)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    return escape.json_text(text) + "\n"  # raw values, but no character a terminal acts on


def write_json(
    path: str | os.PathLike[str], header: Mapping[str, Any], rows: Iterable[Row]
) -> None:
    """Write the JSON report atomically (temp file in the same folder, then ``os.replace``)."""
    _atomic_write(path, dumps_json(header, rows).encode("utf-8"))


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: Any) -> str:
    """The plugin's own text (numbers, labels) in a table cell: only ``|`` needs escaping.

    Untrusted text goes through :func:`escape.markdown` / :func:`escape.markdown_code`.
    """
    return escape.terminal(text).replace("\\", "\\\\").replace("|", "\\|")


def _md_fenced(text: str) -> list[str]:
    """``text`` as a fenced code block whose fence no line of the text can close."""
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def _short_fingerprint(fingerprint: Any, length: int = 12) -> str:
    text = str(fingerprint or "")
    if ":" in text:  # "sha256:abcd..." -> "abcd..."
        text = text.split(":", 1)[1]
    return text[:length] or "?"


def _ckpt_text(ckpt: Any) -> str:
    def code(text: Any) -> str:
        return escape.markdown_code(text, _NAME_LIMIT * 2, table=False)

    if not isinstance(ckpt, Mapping):
        return code(ckpt) if ckpt else "?"
    fingerprint = _short_fingerprint(ckpt.get("fingerprint"))
    out = f"{code(ckpt.get('ref') or '?')} ({code(fingerprint)})"
    if ckpt.get("name"):
        out = f"**{escape.markdown(ckpt['name'], _NAME_LIMIT)}** " + out
    return out


def format_markdown(header: Mapping[str, Any], rows: Iterable[Row]) -> str:
    """A GitHub-flavoured Markdown summary (PR comment, ``$GITHUB_STEP_SUMMARY``)."""
    rows = sort_rows(rows)
    alpha = header.get("alpha", 0.05)
    alpha = float(alpha) if _finite(alpha) else 0.05
    several = len(_candidates(rows)) > 1
    out = [f"### pytest-forgetting: {_counts_phrase(rows) if rows else 'no checks'}", ""]
    if header.get("interrupted"):
        out += ["> **Interrupted:** the run did not finish, so these results are partial; run it to the end before trusting them.", ""]

    tuned = header.get("tuned_ckpts") or []
    tuned_text = ", ".join(_ckpt_text(t) for t in tuned) if tuned else "?"
    out.append(f"Base {_ckpt_text(header.get('base_ckpt'))} → tuned {tuned_text}  ")
    env = [f"alpha {alpha:g} (one-sided)"]
    for key in ("device", "dtype"):
        if header.get(key):
            env.append(escape.markdown(header[key], _NAME_LIMIT))
    for key, label in (("torch_version", "torch"), ("plugin_version", "pytest-forgetting")):
        if header.get(key):
            env.append(f"{label} {escape.markdown(header[key], _NAME_LIMIT)}")
    out.append(" · ".join(env))
    out.append("")
    if not rows:
        return "\n".join(out) + "\n"

    short = _short_names(str(r.get("test") or "") for r in rows)
    columns = list(_COLUMNS)
    align = ["---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "---"]
    if several:
        columns.insert(0, "candidate")
        align.insert(0, "---")
    columns = [c[0].upper() + c[1:] if c != "n" else c for c in columns]
    out.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
    out.append("|" + "|".join(align) + "|")
    for row in rows:
        cells = _row_cells(row, short)
        cells[-1] = f"{_ICONS[_verdict(row)]} {cells[-1]}"
        # test, task and metric are the row's own names (escaped); the rest is the plugin's text
        cells = ([escape.markdown_code(cells[0])] + [escape.markdown(c) for c in cells[1:3]]
                 + [_md_cell(c) for c in cells[3:]])
        if several:
            candidate = row.get("candidate")
            cells.insert(0, escape.markdown(candidate, _NAME_LIMIT) if candidate else "(unnamed)")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Drop > 0 is worse; brackets hold the two-sided {_ci_percent(alpha)} interval, whose ends "
        f"are the one-sided bounds at alpha={alpha:g}."
    )
    if any(_soft_inconclusive(r) for r in rows):
        out.append("\\* INCONCLUSIVE that did not fail its test (`--forgetting-inconclusive`).")
    reuse = _reuse_phrase(rows)
    if reuse:
        out.append(reuse)
    if several:
        out.append("")
        out.append("**Ranking**")
        out.append("")
        out.extend(f"- {line}" for line in _ranking_lines(rows, escape.markdown))

    bad = [r for r in rows if _verdict(r) != "pass"]
    if bad:
        out.append("")
        out.append("#### Details")
        for row in bad:
            out.append("")
            test = escape.markdown_code(row.get("test") or "?", table=False)
            title = f"{_ICONS[_verdict(row)]} {test}"
            if several:
                candidate = row.get("candidate")
                name = escape.markdown(candidate, _NAME_LIMIT) if candidate else "(unnamed)"
                title += f" ({name})"
            out.append(title)
            out.append("")
            out.extend(_md_fenced(failure_message(row)))
    return "\n".join(out) + "\n"


_REUSE_KINDS = (("computed", "computed"), ("memory", "reused in memory"), ("cache", "read from the cache"))


def _reuse_phrase(rows: list[Row]) -> str:
    """``Evaluations per check: base 1 computed, 3 reused in memory; tuned ...`` ("" without reuse fields)."""
    parts = []
    for role in ("base", "tuned"):
        kinds = Counter(str(r.get(f"{role}_reuse") or "") for r in rows)
        counted = [f"{kinds[k]} {label}" for k, label in _REUSE_KINDS if kinds.get(k)]
        if counted:
            parts.append(f"{role} " + ", ".join(counted))
    return f"Evaluations per check: {'; '.join(parts)}." if parts else ""


def write_markdown(path: str | os.PathLike[str], header: Mapping[str, Any],
                   rows: Iterable[Row]) -> None:
    """Write :func:`format_markdown` atomically. ``$GITHUB_STEP_SUMMARY`` wants appending:
    the plugin (not this function) should append the text there instead."""
    _atomic_write(path, format_markdown(header, rows).encode("utf-8"))


# --------------------------------------------------------------------------- PNG plot

_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef8f00", "error": "#757575"}
_ALLOWED = "#66bb6a"


def _tuned_from_drop(row: Row, drop: float) -> float:
    """The tuned value that a given drop means, for this row's direction and scale."""
    base = float(row["base"])
    scale = abs(base) if row.get("relative") else 1.0
    sign = -1.0 if row.get("higher_is_better", True) else 1.0
    return base + sign * drop * scale


def _plot_geometry(row: Row) -> dict[str, float] | None:
    if not (_finite(row.get("base")) and _finite(row.get("drop"))):
        return None
    geo = {"base": float(row["base"])}
    tuned = row.get("tuned")
    geo["tuned"] = float(tuned) if _finite(tuned) else _tuned_from_drop(row, float(row["drop"]))
    ends = [_tuned_from_drop(row, float(row[k])) for k in ("ci_low", "ci_high")
            if _finite(row.get(k))]
    if len(ends) == 2:
        geo["lo"], geo["hi"] = min(ends), max(ends)
    if _finite(row.get("margin")):
        geo["threshold"] = _tuned_from_drop(row, float(row["margin"]))
    low, high = _metric_range(row)
    return {k: min(max(v, low), high) for k, v in geo.items()}  # an interval never leaves the metric's range


def _metric_range(row: Row) -> tuple[float, float]:
    """Where the metric's values can lie: [0, 1] for bounded metrics, [0, inf) for losses and perplexities."""
    if _bounded(row):
        return 0.0, 1.0
    values = [float(row[k]) for k in ("base", "tuned") if _finite(row.get(k))]
    if not row.get("higher_is_better", True) and values and min(values) >= 0:
        return 0.0, math.inf
    return -math.inf, math.inf


def write_plot(path: str | os.PathLike[str], rows: Iterable[Row], *, alpha: float) -> None:
    """A PNG of base vs tuned per check, grouped by task and metric.

    Each check is one line: base (black bar), tuned (dot coloured by verdict) with its
    interval, the worst tuned value the margin allows (dashed) and the allowed region
    (green). Rendered with the Agg canvas directly, so the user's pyplot backend and global
    state are left alone.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
        from matplotlib.transforms import blended_transform_factory
    except ImportError:
        raise ConfigError(
            "--forgetting-plot needs matplotlib: pip install 'pytest-forgetting[plot]'"
        ) from None

    rows = sort_rows(rows)
    several = len(_candidates(rows)) > 1
    short = _short_names(str(r.get("test") or "") for r in rows)
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        key = (str(row.get("task") or "?"), str(row.get("split") or ""),
               str(row.get("metric") or "?"))
        groups.setdefault(key, []).append(row)
    groups = dict(sorted(groups.items()))
    if not groups:
        groups[("", "", "")] = []

    heights = [max(1, len(g)) * 0.55 + 0.35 for g in groups.values()]
    fig = Figure(figsize=(12, sum(heights) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]

    for ax, ((task, split, metric), group) in zip(axes, groups.items()):
        if not group:
            ax.text(0.5, 0.5, "no checks", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        geos = [_plot_geometry(r) for r in group]
        xs = [v for g in geos if g for v in g.values()]
        if xs:
            lo, hi = min(xs), max(xs)
            pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.01)
            lo, hi = lo - pad, hi + pad
            if all(_bounded(r) for r in group):
                lo, hi = max(lo, -0.005), min(hi, 1.005)
        else:
            lo, hi = 0.0, 1.0
        ax.set_xlim(lo, hi)
        label_at = blended_transform_factory(ax.transAxes, ax.transData)

        for y, (row, geo) in enumerate(zip(group, geos)):
            verdict = _verdict(row)
            colour = _COLOURS[verdict]
            if geo is None:
                reason = escape.plot(row.get("reason") or "no values", 90)
                ax.text(0.5, y, f"ERROR: {reason}", ha="center",
                        va="center", color=colour, transform=label_at, fontsize=9)
            else:
                top, bottom = y - 0.38, y + 0.38
                if "threshold" in geo:
                    higher = row.get("higher_is_better", True)
                    edge = hi if higher else lo
                    ax.fill_betweenx([top, bottom], geo["threshold"], edge, color=_ALLOWED,
                                     alpha=0.18, linewidth=0, zorder=1)
                    ax.plot([geo["threshold"]] * 2, [top, bottom], color=_ALLOWED, ls="--",
                            lw=1.5, zorder=2)
                ax.plot([geo["base"]] * 2, [top, bottom], color="black", lw=2.5, zorder=3)
                xerr = None
                if "lo" in geo:
                    xerr = [[max(0.0, geo["tuned"] - geo["lo"])],
                            [max(0.0, geo["hi"] - geo["tuned"])]]
                ax.errorbar(geo["tuned"], y, xerr=xerr, fmt="o", color=colour, ms=8,
                            capsize=5, elinewidth=2.2, capthick=2.2, zorder=4)
            note = _LABELS[verdict]
            if geo is not None:
                note += f"  {_drop_cell(row)}, margin {_margin_cell(row)}"
            ax.text(1.01, y, note, transform=label_at, va="center", ha="left", fontsize=9,
                    color=colour, fontweight="bold" if verdict != "pass" else "normal")

        labels = []
        for row in group:
            test = short.get(str(row.get("test") or ""), "?")
            if several:  # "naive: test_x", not "naive: test_x[naive]"
                test = _without_candidate(test, str(row.get("candidate") or ""))
            label = escape.plot(_truncate_left(test, 36))
            if several:
                candidate = row.get("candidate")
                name = escape.plot(_truncate_left(str(candidate), 36)) if candidate else "(unnamed)"
                label = f"{name}: {label}"
            labels.append(label)
        ax.set_yticks(range(len(group)), labels, fontsize=9)
        ax.set_ylim(len(group) - 0.5, -0.5)
        ax.tick_params(axis="y", length=0)
        direction = "higher" if group[0].get("higher_is_better", True) else "lower"
        title = escape.plot(f"{task}/{split}" if split else task, 60)
        ax.set_title(f"{title}  ·  {escape.plot(metric, 40)} ({direction} is better)",
                     loc="left", fontsize=10,
                     fontweight="bold")
        if all(_bounded(r) for r in group):
            ax.xaxis.set_major_formatter(
                FuncFormatter(lambda v, _pos: _trim_zeros(f"{v * 100:.2f}") + "%"))
        ax.grid(axis="x", color="#dddddd", lw=0.8, zorder=0)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    present = [v for v in VERDICTS if any(_verdict(r) == v for r in rows)]
    handles = [
        Line2D([], [], color="black", lw=2.5, marker="|", ms=14, ls="none", mew=2.5, label="base"),
        Line2D([], [], color="#555555", marker="o", ls="-", lw=2,
               label=f"tuned, {_ci_percent(alpha)} interval"),
        Line2D([], [], color=_ALLOWED, ls="--", lw=1.5,
               label="worst tuned value the margin allows"),
        Patch(color=_ALLOWED, alpha=0.25, label="allowed"),
    ] + [Patch(color=_COLOURS[v], label=_LABELS[v]) for v in present]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
               fontsize=9, frameon=False)
    summary = _counts_phrase(rows) if rows else "no checks"
    fig.suptitle(f"pytest-forgetting: base vs tuned — {summary} (alpha={alpha:g}, one-sided)",
                 fontsize=12)

    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, metadata={"Software": None}), chmod=0o644)
    from .drift import write_drift_plot  # where the weights moved, beside it: PLOT.drift.png

    write_drift_plot(os.path.splitext(os.fspath(path))[0] + ".drift.png", rows)


# --------------------------------------------------------------------------- JUnit


def _property_text(value: Any) -> str:
    return escape.xml(_property_value(value))


def _property_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return f"{value:.6g}" if math.isfinite(value) else _nonfinite_text(value).lstrip("+")
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def junit_properties(row: Row) -> list[tuple[str, str]]:
    """The row as ``("forgetting_<key>", text)`` pairs for ``record_property`` (JUnit XML).

    Values are one line each, with nothing XML cannot hold (:func:`escape.xml`).
    """
    keys = [k for k in _ROW_KEYS if k in row] + sorted(k for k in row if k not in _ROW_KEYS)
    return [(f"forgetting_{escape.xml(k, _NAME_LIMIT)}", _property_text(row[k])) for k in keys]
