"""The setup and call phases of a checked test: evaluate and decide, record the rows, enforce.

Per-test results travel as one JSON attribute of every test report (``report.forgetting_rows``,
``attach_rows``; pytest-xdist serialises report attributes, so they reach the controller), where
``ForgettingPlugin.collect_report`` takes them.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from .collection import CANDIDATE_ARG
from .errors import ForgettingError
from .results import CheckRow, Outcome, draft_row, outcome_for
from .state import CHECKS_KEY, RESULTS_KEY, ROWS_ATTR, ROWS_KEY, STATE_KEY, state

if TYPE_CHECKING:
    from .checks import Check


class ForgettingInconclusiveWarning(pytest.PytestWarning):
    """A check could not be settled with the examples available (``--forgetting-inconclusive warn``)."""


# its public path (``-W error::pytest_forgetting.runner.ForgettingInconclusiveWarning``, tracebacks, xdist)
ForgettingInconclusiveWarning.__module__ = "pytest_forgetting.runner"


def run_item_checks(item: pytest.Item) -> None:
    """Setup phase of a marked test: evaluate and decide every check; a bad input is an ERROR here."""
    checks = item.stash.get(CHECKS_KEY, None)
    if not checks:
        return
    st = state(item.config)
    item.stash[ROWS_KEY] = {}  # a rerun (pytest-rerunfailures) starts from no rows
    results = []
    candidate = getattr(item, "candidate", None)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        candidate = callspec.params.get(CANDIDATE_ARG, candidate)
    for index, check in enumerate(checks):
        error = None
        try:
            results.append((index, st.session.run_check(check, test=item.nodeid, candidate=candidate)))
        except ForgettingError as exc:
            error = str(exc)
        except Exception as exc:  # an unexpected library error: still one clear line on this test
            error = f"unexpected {type(exc).__name__} while evaluating: {exc}"
        except BaseException as exc:
            # pytest-timeout's Failed, pytest.skip/fail/exit, KeyboardInterrupt: pytest decides the outcome,
            # but the table must not lose the check (nor the checks that never started)
            _interrupted_rows(item, checks, index, exc, candidate or "")
            raise
        if error is not None:  # failed outside the except block: no chained traceback in the report
            _error_row(item, index, check, error, candidate=candidate or "")
            from .escape import terminal  # names and file names in the reason: one visible line

            pytest.fail(terminal(f"{check.label}: {error}"), pytrace=False)
    item.stash[RESULTS_KEY] = results


def _interrupted_rows(item: pytest.Item, checks: list[Check], index: int, exc: BaseException, candidate: str) -> None:
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    _error_row(item, index, checks[index], f"interrupted while evaluating ({what})")
    for later in range(index + 1, len(checks)):
        _error_row(item, later, checks[later], f"not run: an earlier check of this test was interrupted ({what})")
    rows = item.stash[ROWS_KEY]
    for i in range(index, len(checks)):
        rows[i] = replace(rows[i], candidate=candidate)
    if isinstance(exc, (KeyboardInterrupt, pytest.exit.Exception)):
        # pytest logs no report for this phase: hand the rows to this process's table directly
        st = item.config.stash.get(STATE_KEY, None)
        if st is not None:
            for i, row in item.stash.get(ROWS_KEY, {}).items():
                st.add_row((item.nodeid, i), row)


def _error_row(item: pytest.Item, index: int, check: Check, reason: str, candidate: str = "") -> None:
    row = draft_row(check, test=item.nodeid, candidate=candidate, metric=check.metric or "-")
    row.update(reason=reason, outcome=Outcome.ERROR)
    row = CheckRow.from_dict(row)
    record_row(item, index, row)


def record_row(item: pytest.Item, index: int, row: CheckRow) -> None:
    """Set row ``index`` of this item's run (it travels on the item's reports: see ``attach_rows``).

    Under ``@hypothesis.given`` every example would be a row: the rows of one check (kind, task,
    split, metric, candidate) are folded into one, the worst example's, with ``examples`` counting them.
    """
    rows = item.stash.setdefault(ROWS_KEY, {})
    if index >= 1000 and _is_hypothesis_test(item):  # rows of forgetting.assert_* (markers: one row per test)
        group = tuple(str(row.get(k)) for k in ("kind", "task", "split", "metric", "candidate"))
        groups = item.stash.setdefault(_GROUPS_KEY, {})
        index = groups.setdefault(group, index)
        old = rows.get(index)
        row = replace(row, examples=(old or {}).get("examples", 0) + 1)
        if old is not None and _severity(old) >= _severity(row):
            row = replace(old, examples=row["examples"])
    rows[index] = row


_GROUPS_KEY = pytest.StashKey[dict]()
_RANK = {"pass": 0, "inconclusive": 1, "fail": 2, "error": 3}


def _is_hypothesis_test(item: pytest.Item) -> bool:
    return bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))


def _severity(row: CheckRow) -> tuple[int, float]:
    """Worse verdict first, then the higher upper bound of the drop above its margin."""

    def num(key: str) -> float:
        value = row.get(key)
        return float(value) if isinstance(value, (int, float)) and value == value else float("-inf")

    return _RANK.get(str(row.get("verdict")), 3), max(num("ci_high"), num("drop")) - num("margin")


def attach_rows(item: pytest.Item, report: pytest.TestReport) -> None:
    """Put this item's rows on its report (a JSON string, so it survives xdist's serialisation)."""
    rows = item.stash.get(ROWS_KEY, None)
    if rows:
        setattr(
            report,
            ROWS_ATTR,
            json.dumps(
                [{"index": i, "row": r.to_json()} for i, r in sorted(rows.items())],
                sort_keys=True,
                default=_json_default,
            ),
        )


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def enforce(item: pytest.Item) -> None:
    """Call phase: turn the verdicts into the test outcome (before the test body runs)."""
    __tracebackhide__ = True
    results = item.stash.get(RESULTS_KEY, None)
    if not results:
        return
    settings = state(item.config).settings
    failures: list[str] = []
    from .report import failure_message

    for index, result in results:
        outcome = outcome_for(result.row.verdict, settings.inconclusive)
        result.row = row = replace(result.row, outcome=outcome)
        if outcome == Outcome.FAILED:
            failures.append(failure_message(row))
        elif outcome == Outcome.WARNED:
            warnings.warn(ForgettingInconclusiveWarning(failure_message(row).splitlines()[0]), stacklevel=1)
        record_row(item, index, row)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@contextlib.contextmanager
def current_item(item: pytest.Item) -> Iterator[None]:
    """Lets the session-scoped ``forgetting`` fixture record rows on the test that is running."""
    st = item.config.stash.get(STATE_KEY, None)
    if st is None:
        yield
        return
    st.current_item = item
    try:
        yield
    finally:
        st.current_item = None


def show_notes(exc: BaseException) -> None:
    """Append ``__notes__`` to a ``pytest.fail(..., pytrace=False)`` message, which pytest prints alone.

    Hypothesis reports the falsifying (shrunk) example as a note: without this, a property test
    failing in ``forgetting.assert_retains`` would show the verdict but not the configuration.
    """
    notes = [n for n in getattr(exc, "__notes__", []) if isinstance(n, str)]
    msg = getattr(exc, "msg", None)
    if notes and isinstance(msg, str) and not getattr(exc, "pytrace", True) and notes[0] not in msg:
        exc.msg = "\n".join([msg, "", *notes])  # type: ignore[attr-defined]
