"""What every report shares: rows as :class:`CheckRow` s, their order and counts, number and interval texts, cells.

The output modules (:mod:`.table`, :mod:`.message`, :mod:`.markdown`, :mod:`.plot`, :mod:`.json`, :mod:`.junit`)
draw from these helpers, so a number, an interval, a verdict or a test name reads the same in each of them.

Rows are read through the typed attributes of :class:`~pytest_forgetting.results.CheckRow`; :func:`as_row` makes one
of any mapping with the JSON report's keys (tests and users pass plain dicts), as it stands: nothing is checked or
converted, so odd or missing values are tolerated (an unknown verdict reads ERROR). The gain of an ``improves`` row
is :attr:`CheckRow.gain` / :attr:`CheckRow.min_gain` (``results.py``), never re-derived here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pytest_forgetting import escape
from pytest_forgetting.results import ABSENT, CheckRow, ClassDrop, Outcome, Verdict

__all__ = [
    "DASH",
    "ELLIPSIS",
    "ICONS",
    "LABELS",
    "NAME_LIMIT",
    "PAST",
    "POINTS",
    "REASON_LIMIT",
    "REPORT_MODE",
    "VERDICTS",
    "Row",
    "as_class",
    "as_row",
    "candidates",
    "ci_percent",
    "counts_phrase",
    "delta_texts",
    "delta_unit",
    "drop_cell",
    "finite",
    "fixed",
    "interval_text",
    "is_number",
    "margin_cell",
    "margin_value_text",
    "n_text",
    "nfr_text",
    "nonfinite_text",
    "short_names",
    "sig_decimals",
    "soft_inconclusive",
    "sort_rows",
    "summary_counts",
    "task_text",
    "trim_zeros",
    "truncate_left",
    "values_texts",
    "verdict_of",
    "verdict_text",
    "without_candidate",
]

Row = Mapping[str, Any]
_R = TypeVar("_R", bound=Row)

VERDICTS = ("pass", "fail", "inconclusive", "error")
LABELS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "error": "ERROR"}
PAST = {"pass": "passed", "fail": "failed", "inconclusive": "inconclusive", "error": "error"}
ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "error": "❗"}
DASH = "—"
ELLIPSIS = "…"
# caps on untrusted text in messages: a name is shown up to this many characters, a reason up to
# REASON_LIMIT (a checkpoint cannot flood the terminal or the job summary)
NAME_LIMIT = 120
REASON_LIMIT = 2000
REPORT_MODE = 0o644  # a report file is meant to be read by others: this mode whatever the umask


# --------------------------------------------------------------------------- rows


def _lenient_fields(record: type, missing: Mapping[str, Any]) -> tuple[tuple[str, str, Any], ...]:
    """(field, key, value when the key is missing) of a record: ABSENT for optional fields, else None or ``missing``."""
    keys = getattr(record, "_KEYS", {})
    return tuple(
        (f.name, keys.get(f.name, f.name), ABSENT if f.default is ABSENT else missing.get(f.name))
        for f in dataclasses.fields(record)
    )


_ROW_FIELDS = _lenient_fields(CheckRow, {"higher_is_better": True})
_CLASS_FIELDS = _lenient_fields(ClassDrop, {})


def as_row(row: Row) -> CheckRow:
    """The row as a :class:`CheckRow`: itself when it is one, else a record of the mapping's values as they stand.

    Nothing is checked or converted (unlike :meth:`CheckRow.from_dict`): a missing key reads None
    (``higher_is_better``: True, an optional field: ABSENT), an odd value stays as it is, a key no field names
    is left out (the JSON report and the JUnit properties, which write every key, read the mapping itself).
    """
    if isinstance(row, CheckRow):
        return row
    return CheckRow(**{name: row.get(key, missing) for name, key, missing in _ROW_FIELDS})


def as_class(cls: Mapping[str, Any]) -> ClassDrop:
    """A ``worst_classes`` entry as a :class:`ClassDrop`, leniently as :func:`as_row` (a missing key reads None)."""
    if isinstance(cls, ClassDrop):
        return cls
    return ClassDrop(**{name: cls.get(key, missing) for name, key, missing in _CLASS_FIELDS})


# --------------------------------------------------------------------------- ordering, counts


def _float_key(value: Any) -> tuple[int, float]:
    # NaN breaks sorting (every comparison is False), so it gets a slot of its own.
    if not is_number(value):
        return (2, 0.0)
    value = float(value)
    if math.isnan(value):
        return (1, 0.0)
    return (0, value)


def _sort_key(row: CheckRow) -> tuple:
    return (
        str(row.candidate or ""),
        str(row.test or ""),
        str(row.task or ""),
        str(row.split or ""),
        str(row.metric or ""),
        str(row.kind or ""),
        bool(row.relative),
        _float_key(row.margin),
        str(row.verdict or ""),
    )


def sort_rows(rows: Iterable[_R]) -> list[_R]:
    """The rows (as they were given) in report order: by candidate, then test node id, then task and metric.

    The order does not depend on the order the rows arrived in (xdist workers finish in any
    order), so every report built from the same rows is the same.
    """
    return sorted(rows, key=lambda row: _sort_key(as_row(row)))


def summary_counts(rows: Iterable[Row]) -> dict[str, int]:
    """``{"checks": N, "pass": .., "fail": .., "inconclusive": .., "error": ..}``."""
    counts = Counter(verdict_of(as_row(r)) for r in rows)
    out = {"checks": sum(counts.values())}
    for verdict in VERDICTS:
        out[verdict] = counts.get(verdict, 0)
    return out


def verdict_of(row: CheckRow) -> str:
    """The row's verdict as one of :data:`VERDICTS` (anything else reads ``error``)."""
    verdict = str(row.verdict or "error").lower()
    return verdict if verdict in LABELS else "error"


def candidates(rows: Iterable[CheckRow]) -> list[str]:
    """The tuned candidates of the rows. With named candidates, rows of models a test built itself
    (``finetune`` results, modules: candidate "") are not one more candidate."""
    names = sorted({str(r.candidate or "") for r in rows})
    named = [n for n in names if n]
    return named or names


def counts_phrase(rows: list[CheckRow]) -> str:
    counts = summary_counts(rows)
    checks = counts["checks"]
    parts = [f"{checks} check{'s' if checks != 1 else ''}"]
    names = candidates(rows)
    if len(names) > 1:
        parts[0] += f" on {len(names)} candidates"
    for verdict in VERDICTS:
        if counts[verdict]:
            word = PAST[verdict]
            if verdict == Verdict.ERROR and counts[verdict] > 1:
                word = "errors"
            parts.append(f"{counts[verdict]} {word}")
    return ", ".join(parts)


def ci_percent(alpha: float) -> str:
    return f"{(1 - 2 * alpha) * 100:g}%"


# --------------------------------------------------------------------------- number formatting


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(float(value))


def nonfinite_text(value: Any) -> str:
    if value is None or not is_number(value):
        return DASH
    value = float(value)
    if math.isnan(value):
        return "NaN"
    return "+inf" if value > 0 else "-inf"


def sig_decimals(magnitude: float, sig: int = 3) -> int:
    """Decimals that show ``sig`` significant digits of a number of this magnitude."""
    if not magnitude or not math.isfinite(magnitude):
        return sig - 1
    return max(0, min(6, sig - 1 - math.floor(math.log10(abs(magnitude)))))


def fixed(value: Any, decimals: int, *, signed: bool = False) -> str:
    if not finite(value):
        return nonfinite_text(value)
    text = f"{float(value):{'+' if signed else ''}.{decimals}f}"
    # "-0.0" after rounding says "worse by nothing" with the wrong sign.
    if text.lstrip("+-").strip("0.") == "":
        text = ("+" if signed else "") + text.lstrip("+-")
    return text


POINTS = (100.0, " pp")  # the unit of a proportion's drop: percentage points


def delta_unit(row: CheckRow) -> tuple[float, str]:
    """Scale and unit of drops and margins: relative %, percentage points, or metric units."""
    if row.relative:
        return 100.0, "% rel"
    if row.is_bounded:
        return POINTS
    return 1.0, ""


def delta_texts(unit: tuple[float, str], values: list[Any], *, signed: bool) -> tuple[list[str], str]:
    """Format drops (or gains, or margins) in one ``(scale, unit)`` (:func:`delta_unit`) with common decimals."""
    scale, suffix = unit
    if scale != 1.0:
        decimals = 1
    else:
        mags = [abs(float(v)) for v in values if finite(v)]
        decimals = sig_decimals(max(mags) if mags else 0.0)
    texts = [fixed(float(v) * scale if finite(v) else v, decimals, signed=signed) for v in values]
    return texts, suffix


def values_texts(row: CheckRow, values: list[Any]) -> list[str]:
    """Format metric values (base, tuned): percent with one decimal, or 3 significant digits.

    Unbounded values get at least as many decimals as the row's drop, so that base and
    tuned visibly differ by the drop shown beside them (12.34 -> 13.15, drop +0.81).
    """
    if row.is_bounded:
        return [f"{fixed(float(v) * 100, 1)}%" if finite(v) else nonfinite_text(v) for v in values]
    mags = [abs(float(v)) for v in values if finite(v)]
    decimals = sig_decimals(max(mags) if mags else 0.0)
    if not row.relative:
        drops = [abs(float(v)) for v in (row.drop, row.ci_low, row.ci_high) if finite(v)]
        if drops:
            decimals = max(decimals, min(4, sig_decimals(max(drops))))
    return [fixed(v, decimals) for v in values]


def trim_zeros(text: str) -> str:
    if "." in text and text[-1:].isdigit():
        text = text.rstrip("0").rstrip(".")
    return text


def margin_value_text(row: CheckRow, value: Any, *, signed: bool) -> str:
    """One drop, margin or gain of the row in its unit (metric units without trailing zeros)."""
    unit = delta_unit(row)
    [text], suffix = delta_texts(unit, [value], signed=signed)
    if unit[0] == 1.0:
        text = trim_zeros(text)
    return text + suffix


def interval_text(row: CheckRow, value: Any, lo: Any, hi: Any, *, signed: bool) -> str:
    texts, unit = delta_texts(delta_unit(row), [value, lo, hi], signed=signed)
    out = f"{texts[0]}{unit}"
    if lo is not None or hi is not None:
        out += f" [{texts[1]}, {texts[2]}]"
    return out


def drop_cell(row: CheckRow) -> str:
    """The drop and its interval; an ``improves`` row's gain (:attr:`CheckRow.gain`)."""
    if row.drop is None:
        return DASH
    if row.is_improves:
        return "gain " + interval_text(row, *row.gain, signed=True)
    return interval_text(row, row.drop, row.ci_low, row.ci_high, signed=True)


def margin_cell(row: CheckRow) -> str:
    """The margin; an ``improves`` row's required gain (:attr:`CheckRow.min_gain`) after ``≥``."""
    if row.margin is None:
        return DASH
    if row.is_improves:
        return "≥ " + margin_value_text(row, row.min_gain, signed=True)
    return margin_value_text(row, row.margin, signed=False)


def nfr_text(row: CheckRow) -> str:
    nfr = row.nfr
    if nfr is None:
        return DASH
    return f"{fixed(float(nfr) * 100, 1)}%" if finite(nfr) else nonfinite_text(nfr)


def n_text(row: CheckRow) -> str:
    return DASH if row.n is None else str(row.n)


def task_text(row: CheckRow, *, default_split: str | None = None) -> str:
    """``task/split``; just ``task`` when the split is ``default_split`` (saves table width)."""
    task = escape.terminal(row.task or "?", NAME_LIMIT)
    split = row.split
    if split and split != default_split:
        return f"{task}/{escape.terminal(split, NAME_LIMIT)}"
    return task


def verdict_text(row: CheckRow) -> str:
    text = LABELS[verdict_of(row)]
    if soft_inconclusive(row):
        text += "*"
    return text


def soft_inconclusive(row: CheckRow) -> bool:
    """An INCONCLUSIVE verdict that did not fail its test (--forgetting-inconclusive warn|pass)."""
    return verdict_of(row) == Verdict.INCONCLUSIVE and row.outcome in (Outcome.PASSED, Outcome.WARNED)


# --------------------------------------------------------------------------- test names


def short_names(nodeids: Iterable[str]) -> dict[str, str]:
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


def without_candidate(test: str, candidate: str) -> str:
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


def truncate_left(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return ELLIPSIS + text[-(width - 1) :]
