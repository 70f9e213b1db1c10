"""The ``forgetting`` fixture object: compare checkpoints or in-memory modules from test code."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import pytest

from .checks import bind_task, parse_check
from .errors import ForgettingError
from .results import Outcome, outcome_for


class Forgetting:
    """``compare`` returns a Comparison; ``assert_retains`` / ``assert_improves`` fail the test like a marker would."""

    def __init__(self, run_state: Any) -> None:
        self._state = run_state
        self._indices: dict[tuple, int] = {}  # row indices of API calls, after those of markers

    @property
    def session(self) -> Any:
        return self._state.session

    def _slot(self, role: str, model: Any) -> Any:
        sess = self.session
        if model is None:
            if role == "base":
                return sess.base_slot()
            item = getattr(self._state, "current_item", None)
            callspec = getattr(item, "callspec", None)
            from .collection import CANDIDATE_ARG

            return sess.tuned_slot(callspec.params.get(CANDIDATE_ARG) if callspec is not None else None)
        if isinstance(model, str):  # one slot per reference for the session: a refusal is remembered
            return sess.ref_slot(role, model)
        return sess.module_slot(role, getattr(model, "model", model) if not hasattr(model, "state_dict") else model)

    def _run(self, kind: str, kwargs: dict[str, Any], base: Any, tuned: Any, record: bool = False) -> Any:
        __tracebackhide__ = True
        where = f"forgetting.{'assert_' + kind if kind else 'compare'}"
        item = getattr(self._state, "current_item", None)
        check = None
        try:
            check = parse_check(kind, kwargs, where)
            check = bind_task(check, where, self.session.task(check.task))
            result = self.session.run_check(
                check,
                test=item.nodeid if item is not None else "<api>",
                base=self._slot("base", base),
                tuned=self._slot("tuned", tuned),
            )
        except ForgettingError as exc:
            error = str(exc)
        else:
            return result
        if record and item is not None and check is not None:  # an ERROR is a row of the summary, as for markers
            from .phases import _error_row

            _error_row(
                item, self._indices.setdefault((item.nodeid, check, ""), 1000 + len(self._indices)), check, error
            )
        from .escape import terminal  # file, tensor and task names in the error: one visible line

        pytest.fail(terminal(error if error.startswith(where) else f"{where}: {error}"), pytrace=False)

    def compare(
        self,
        task: str,
        base: Any = None,
        tuned: Any = None,
        *,
        metric: str | None = None,
        split: str = "test",
        max_drop: float = 0.0,
        relative: bool = False,
    ) -> Any:
        """Evaluate base and tuned on ``task`` (paired) and return the Comparison; never fails the test."""
        __tracebackhide__ = True
        kwargs = {"task": task, "max_drop": max_drop, "relative": relative, "split": split}
        if metric:
            kwargs["metric"] = metric
        result = self._run("retains", kwargs, base, tuned)
        if result.comparison is None:  # the tuned model is broken (NaN/Inf)
            from .escape import terminal

            pytest.fail(terminal(result.row["reason"]), pytrace=False)
        return result.comparison

    def assert_retains(self, tuned: Any = None, *, task: str, max_drop: float, base: Any = None, **kwargs: Any) -> Any:
        """Fail the test unless ``tuned`` keeps ``task`` within ``max_drop`` of the base (same rules as the marker)."""
        __tracebackhide__ = True
        return self._assert("retains", {"task": task, "max_drop": max_drop, **kwargs}, base, tuned)

    def assert_improves(self, tuned: Any = None, *, task: str, min_gain: float, base: Any = None, **kwargs: Any) -> Any:
        """Fail the test unless ``tuned`` beats the base on ``task`` by more than ``min_gain``."""
        __tracebackhide__ = True
        return self._assert("improves", {"task": task, "min_gain": min_gain, **kwargs}, base, tuned)

    def _assert(self, kind: str, kwargs: dict[str, Any], base: Any, tuned: Any) -> Any:
        __tracebackhide__ = True
        from .phases import ForgettingInconclusiveWarning, record_row
        from .report import failure_message

        result = self._run(kind, kwargs, base, tuned, record=True)
        result.row = row = replace(
            result.row, outcome=outcome_for(result.row.verdict, self._state.settings.inconclusive)
        )
        item = getattr(self._state, "current_item", None)
        if item is not None:
            # one row per (test, check): under @given the last example (Hypothesis' final, shrunk one) wins
            key = (item.nodeid, result.check, row.get("candidate", ""))
            index = self._indices.setdefault(key, 1000 + len(self._indices))
            record_row(item, index, row)
        if row["outcome"] == Outcome.FAILED:
            pytest.fail(failure_message(row), pytrace=False)
        if row["outcome"] == Outcome.WARNED:
            warnings.warn(ForgettingInconclusiveWarning(failure_message(row).splitlines()[0]), stacklevel=2)
        return result.comparison
