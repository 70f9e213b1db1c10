"""Where the end-of-run table is drawn: :func:`format_table`, its cells, and the ranking of candidates.

The same cells (:func:`row_cells`) and ranking lines (:func:`ranking_lines`) make the Markdown summary's table
(:mod:`.markdown`); the pytest-html page shows :func:`format_table` as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytest_forgetting import escape
from pytest_forgetting.results import CheckRow, Verdict

from .format import (
    NAME_LIMIT,
    Row,
    as_row,
    candidates,
    ci_percent,
    counts_phrase,
    drop_cell,
    finite,
    margin_cell,
    margin_value_text,
    n_text,
    nfr_text,
    short_names,
    soft_inconclusive,
    sort_rows,
    task_text,
    truncate_left,
    values_texts,
    verdict_of,
    verdict_text,
)

__all__ = ["COLUMNS", "format_table", "ranking_lines", "row_cells"]

COLUMNS = ("test", "task", "metric", "n", "base", "tuned", "drop [CI]", "margin", "NFR", "verdict")
_RIGHT = frozenset({3, 4, 5, 6, 7, 8})
_SEP = "  "
_DEFAULT_WIDTH = 120
_MIN_TEST_WIDTH = 16
_DEFAULT_SPLIT = "test"  # the markers' default split, left out of the table's task column


def row_cells(row: CheckRow, short: Mapping[str, str]) -> list[str]:
    """The row's cells under :data:`COLUMNS` (``short``: the test names of :func:`short_names`)."""
    base, tuned = values_texts(row, [row.base, row.tuned])
    test = str(row.test or "")
    examples = row.examples  # a Hypothesis test: the worst of its examples
    return [
        escape.terminal(short.get(test, test)) + (f" (worst of {examples})" if examples else ""),
        task_text(row, default_split=_DEFAULT_SPLIT),
        escape.terminal(row.metric or "?", NAME_LIMIT),
        n_text(row),
        base,
        tuned,
        drop_cell(row),
        margin_cell(row),
        nfr_text(row),
        verdict_text(row),
    ]


def format_table(rows: Iterable[Row], *, alpha: float, width: int | None = None) -> list[str]:
    """The end-of-run table, as lines without newlines; ``[]`` when there are no rows.

    ``width`` is the terminal width to fit (default 120): only the test column shrinks,
    truncated from the left so that the test function's name stays visible.
    """
    checks = sort_rows([as_row(r) for r in rows])
    if not checks:
        return []
    several = len(candidates(checks)) > 1
    short = short_names(str(r.test or "") for r in checks)
    cells = [row_cells(r, short) for r in checks]

    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(len(COLUMNS))]
    others = sum(widths[1:]) + len(_SEP) * (len(COLUMNS) - 1)
    room = (width or _DEFAULT_WIDTH) - others
    widths[0] = max(_MIN_TEST_WIDTH, len(COLUMNS[0]), min(widths[0], room))

    def render(values: list[str]) -> str:
        out = []
        for i, value in enumerate(values):
            if i == 0:
                value = truncate_left(value, widths[0])
            out.append(value.rjust(widths[i]) if i in _RIGHT else value.ljust(widths[i]))
        return _SEP.join(out).rstrip()

    lines = [f"forgetting: {counts_phrase(checks)} (alpha={alpha:g}, one-sided)"]
    lines.append(render(list(COLUMNS)))
    lines.append(render(["-" * w for w in widths]))
    current = None
    for row, cells_of_row in zip(checks, cells):
        candidate = str(row.candidate or "")
        if several and candidate != current:
            current = candidate
            lines.append(
                f"candidate {escape.terminal(candidate, NAME_LIMIT)}:"
                if candidate
                else "models built by the tests (no candidate):"
            )
        lines.append(render(cells_of_row))

    lines.append(
        f"drop > 0 is worse; [..] = two-sided {ci_percent(alpha)} interval, its ends the "
        f"one-sided bounds at alpha={alpha:g}"
    )
    if any(soft_inconclusive(r) for r in checks):
        lines.append("* INCONCLUSIVE that did not fail its test (--forgetting-inconclusive)")
    if several:
        lines.append("ranking:")
        lines.extend("  " + line for line in ranking_lines(checks))
    return lines


def ranking_lines(rows: list[CheckRow], esc: Any = escape.terminal) -> list[str]:
    """One line per task: who passes every check on it, and the best gain on improves tasks.

    ``esc`` escapes the task and candidate names for the output (terminal or Markdown).
    """
    by_task: dict[str, list[CheckRow]] = {}
    for row in [r for r in rows if r.candidate] or rows:  # models the tests built rank nowhere
        by_task.setdefault(str(row.task or "?"), []).append(row)
    lines = []
    for task in sorted(by_task):
        task_rows = by_task[task]
        passing, not_passing = [], []
        for candidate in candidates(task_rows):
            mine = [r for r in task_rows if str(r.candidate or "") == candidate]
            bad = sum(verdict_of(r) != Verdict.PASS for r in mine)
            name = esc(candidate, NAME_LIMIT) if candidate else "(unnamed)"
            if bad:
                not_passing.append(f"{name} ({bad}/{len(mine)} not passed)")
            else:
                passing.append(name)
        name = esc(task, NAME_LIMIT)
        if passing:
            line = f"{name}: every check passed by {', '.join(passing)}"
        else:
            line = f"{name}: no candidate passes every check"
        if not_passing:
            line += f"; not by {', '.join(not_passing)}"
        line += _best_gain_phrase(task_rows, esc)
        lines.append(line)
    overall = _overall_line([r for r in rows if r.candidate] or rows, esc)
    if overall:
        lines.append(overall)
    return lines


def _overall_line(rows: list[CheckRow], esc: Any = escape.terminal) -> str:
    """When no candidate passes every check: the closest across tasks (fewest not passed, then the smallest share)."""
    names = candidates(rows)
    if len(names) < 2:
        return ""
    counts = {}
    for candidate in names:
        mine = [r for r in rows if str(r.candidate or "") == candidate]
        counts[candidate] = (sum(verdict_of(r) != Verdict.PASS for r in mine), len(mine))
    shown = {c: esc(c, NAME_LIMIT) if c else "(unnamed)" for c in names}
    if any(bad == 0 for bad, _ in counts.values()):
        return ""  # the task lines name who passes every check
    key = {c: (bad, bad / total) for c, (bad, total) in counts.items()}  # fewest not passed, then the smallest share
    best = min(key.values())
    closest = [f"{shown[c]} ({counts[c][0]}/{counts[c][1]} not passed)" for c in names if key[c] == best]
    return f"overall: no candidate passes every check; closest: {', '.join(closest)}"


def _best_gain_phrase(task_rows: list[CheckRow], esc: Any = escape.terminal) -> str:
    improves = [r for r in task_rows if r.is_improves and finite(r.drop)]
    if not improves:
        return ""
    # Gains are only comparable in the same metric and unit.
    groups: dict[tuple[str, bool], list[CheckRow]] = {}
    for row in improves:
        key = (str(row.metric or "?"), bool(row.relative))
        groups.setdefault(key, []).append(row)
    parts = []
    for (metric, _), group in sorted(groups.items()):
        best = min(group, key=lambda r: (-r.gain[0], str(r.candidate or "")))  # the largest gain, then by name
        gain = margin_value_text(best, best.gain[0], signed=True)
        label = f" {esc(metric, NAME_LIMIT)}" if len(groups) > 1 else ""
        name = esc(best.candidate, NAME_LIMIT) if best.candidate else "(unnamed)"
        parts.append(f"best gain{label} {name} {gain}")
    return "; " + "; ".join(parts)
