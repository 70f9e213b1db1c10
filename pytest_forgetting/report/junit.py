"""The JUnit XML properties of a check (:func:`junit_properties`, for ``record_property``).

Like the JSON report, the properties write every key of the row (its mapping view), in the order of
:data:`_ROW_KEYS`, then the others sorted.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from pytest_forgetting import escape

from .format import NAME_LIMIT, Row, nonfinite_text
from .json import plain

__all__ = ["junit_properties"]

# The order of the JUnit properties (and the order a reader expects); other keys follow, sorted.
_ROW_KEYS = (
    "test",
    "candidate",
    "task",
    "split",
    "metric",
    "kind",
    "n",
    "base",
    "tuned",
    "drop",
    "ci_low",
    "ci_high",
    "margin",
    "relative",
    "bounded",
    "higher_is_better",
    "nfr",
    "verdict",
    "reason",
    "n_needed",
    "outcome",
    "worst_classes",
    "flipped_ids",
    "base_cached",
    "base_eval_s",
    "tuned_eval_s",
)


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
        return f"{value:.6g}" if math.isfinite(value) else nonfinite_text(value).lstrip("+")
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def junit_properties(row: Row) -> list[tuple[str, str]]:
    """The row as ``("forgetting_<key>", text)`` pairs for ``record_property`` (JUnit XML).

    Values are one line each, with nothing XML cannot hold (:func:`escape.xml`).
    """
    keys = [k for k in _ROW_KEYS if k in row] + sorted(k for k in row if k not in _ROW_KEYS)
    return [(f"forgetting_{escape.xml(k, NAME_LIMIT)}", _property_text(row[k])) for k in keys]
