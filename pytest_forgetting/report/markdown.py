"""The Markdown summary (PR comment, ``$GITHUB_STEP_SUMMARY``): :func:`format_markdown`, :func:`write_markdown`.

Its table has the cells of the terminal table (:func:`.table.row_cells`) escaped for Markdown, and each check
that did not pass gets its :func:`.message.failure_message` in a fenced block.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_forgetting import escape
from pytest_forgetting._util import atomic_write
from pytest_forgetting.results import CheckRow

from ..results import Verdict
from .format import (
    ICONS,
    NAME_LIMIT,
    REPORT_MODE,
    Row,
    as_row,
    candidates,
    ci_percent,
    counts_phrase,
    finite,
    short_names,
    soft_inconclusive,
    sort_rows,
    verdict_of,
)
from .message import failure_message
from .table import COLUMNS, ranking_lines, row_cells

__all__ = ["format_markdown", "write_markdown"]


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
        return escape.markdown_code(text, NAME_LIMIT * 2, table=False)

    if not isinstance(ckpt, Mapping):
        return code(ckpt) if ckpt else "?"
    fingerprint = _short_fingerprint(ckpt.get("fingerprint"))
    out = f"{code(ckpt.get('ref') or '?')} ({code(fingerprint)})"
    if ckpt.get("name"):
        out = f"**{escape.markdown(ckpt['name'], NAME_LIMIT)}** " + out
    return out


def _candidate_text(row: CheckRow) -> str:
    return escape.markdown(row.candidate, NAME_LIMIT) if row.candidate else "(unnamed)"


def format_markdown(header: Mapping[str, Any], rows: Iterable[Row]) -> str:
    """A GitHub-flavoured Markdown summary (PR comment, ``$GITHUB_STEP_SUMMARY``)."""
    checks = sort_rows([as_row(r) for r in rows])
    alpha = header.get("alpha", 0.05)
    alpha = float(alpha) if finite(alpha) else 0.05
    several = len(candidates(checks)) > 1
    out = [f"### pytest-forgetting: {counts_phrase(checks) if checks else 'no checks'}", ""]
    if header.get("interrupted"):
        out += [
            (
                "> **Interrupted:** the run did not finish, so these results are partial; "
                "run it to the end before trusting them."
            ),
            "",
        ]

    tuned = header.get("tuned_ckpts") or []
    tuned_text = ", ".join(_ckpt_text(t) for t in tuned) if tuned else "?"
    out.append(f"Base {_ckpt_text(header.get('base_ckpt'))} → tuned {tuned_text}  ")
    env = [f"alpha {alpha:g} (one-sided)"]
    for key in ("device", "dtype"):
        if header.get(key):
            env.append(escape.markdown(header[key], NAME_LIMIT))
    for key, label in (("torch_version", "torch"), ("plugin_version", "pytest-forgetting")):
        if header.get(key):
            env.append(f"{label} {escape.markdown(header[key], NAME_LIMIT)}")
    out.append(" · ".join(env))
    out.append("")
    if not checks:
        return "\n".join(out) + "\n"

    short = short_names(str(r.test or "") for r in checks)
    columns = list(COLUMNS)
    align = ["---", "---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "---"]
    if several:
        columns.insert(0, "candidate")
        align.insert(0, "---")
    columns = [c[0].upper() + c[1:] if c != "n" else c for c in columns]
    out.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
    out.append("|" + "|".join(align) + "|")
    for row in checks:
        cells = row_cells(row, short)
        cells[-1] = f"{ICONS[verdict_of(row)]} {cells[-1]}"
        # test, task and metric are the row's own names (escaped); the rest is the plugin's text
        cells = (
            [escape.markdown_code(cells[0])]
            + [escape.markdown(c) for c in cells[1:3]]
            + [_md_cell(c) for c in cells[3:]]
        )
        if several:
            cells.insert(0, _candidate_text(row))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Drop > 0 is worse; brackets hold the two-sided {ci_percent(alpha)} interval, whose ends "
        f"are the one-sided bounds at alpha={alpha:g}."
    )
    if any(soft_inconclusive(r) for r in checks):
        out.append("\\* INCONCLUSIVE that did not fail its test (`--forgetting-inconclusive`).")
    reuse = _reuse_phrase(checks)
    if reuse:
        out.append(reuse)
    if several:
        out.append("")
        out.append("**Ranking**")
        out.append("")
        out.extend(f"- {line}" for line in ranking_lines(checks, escape.markdown))

    bad = [r for r in checks if verdict_of(r) != Verdict.PASS]
    if bad:
        out.append("")
        out.append("#### Details")
        for row in bad:
            out.append("")
            test = escape.markdown_code(row.test or "?", table=False)
            title = f"{ICONS[verdict_of(row)]} {test}"
            if several:
                title += f" ({_candidate_text(row)})"
            out.append(title)
            out.append("")
            out.extend(_md_fenced(failure_message(row)))
    return "\n".join(out) + "\n"


_REUSE_KINDS = (("computed", "computed"), ("memory", "reused in memory"), ("cache", "read from the cache"))


def _reuse_phrase(rows: list[CheckRow]) -> str:
    """``Evaluations per check: base 1 computed, 3 reused in memory; tuned ...`` ("" without reuse fields)."""
    parts = []
    for role, reuse in (("base", lambda r: r.base_reuse), ("tuned", lambda r: r.tuned_reuse)):
        kinds = Counter(str(reuse(r) or "") for r in rows)
        counted = [f"{kinds[k]} {label}" for k, label in _REUSE_KINDS if kinds.get(k)]
        if counted:
            parts.append(f"{role} " + ", ".join(counted))
    return f"Evaluations per check: {'; '.join(parts)}." if parts else ""


def write_markdown(path: str | os.PathLike[str], header: Mapping[str, Any], rows: Iterable[Row]) -> None:
    """Write :func:`format_markdown` atomically. ``$GITHUB_STEP_SUMMARY`` wants appending:
    the plugin (not this function) should append the text there instead."""
    atomic_write(path, format_markdown(header, rows).encode("utf-8"), fsync=True, chmod=REPORT_MODE)
