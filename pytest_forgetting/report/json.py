"""The JSON report: :func:`build_json`, :func:`dumps_json` and :func:`write_json`.

The JSON report keeps the raw values of every key of a row (its mapping view: a plain dict's extra keys too),
made JSON-ready by :func:`plain`; only its order and counts read the rows' typed attributes.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_forgetting import escape
from pytest_forgetting._util import atomic_write

from .format import REPORT_MODE, Row, as_row, candidates, sort_rows, summary_counts

__all__ = ["build_json", "dumps_json", "plain", "write_json"]


def plain(value: Any) -> Any:
    """A JSON-ready copy: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return str(value)


def build_json(header: Mapping[str, Any], rows: Iterable[Row]) -> dict[str, Any]:
    """The JSON report: the header's keys, ``rows`` (in table order) and ``summary`` counts."""
    rows = sort_rows(rows)
    typed = [as_row(r) for r in rows]
    summary: dict[str, Any] = summary_counts(typed)
    summary["by_candidate"] = {
        c: summary_counts(r for r in typed if str(r.candidate or "") == c) for c in candidates(typed)
    }
    report = plain(dict(header))
    report["rows"] = [plain(dict(r)) for r in rows]
    report["summary"] = summary
    return report


def dumps_json(header: Mapping[str, Any], rows: Iterable[Row]) -> str:
    """The JSON report as text: same input, same bytes."""
    report = build_json(header, rows)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    return escape.json_text(text) + "\n"  # raw values, but no character a terminal acts on


def write_json(path: str | os.PathLike[str], header: Mapping[str, Any], rows: Iterable[Row]) -> None:
    """Write the JSON report atomically (:func:`~pytest_forgetting._util.atomic_write`: temp file, fsync, rename)."""
    atomic_write(path, dumps_json(header, rows).encode("utf-8"), fsync=True, chmod=REPORT_MODE)
