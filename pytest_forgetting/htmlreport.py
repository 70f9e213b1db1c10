"""pytest-html integration: the summary table in the report, and each test's rows as its extras.

Registered by ``plugin.pytest_configure`` only when pytest-html is active and ``--html`` is given:
its hooks (``pytest_html_*``) would be unknown hooks without it, and nothing here is imported
otherwise.
"""

from __future__ import annotations

import html
from typing import Any

import pytest

from . import state as _state
from . import summary as _summary


def _pre(lines: list[str]) -> str:
    return '<pre class="forgetting">' + html.escape("\n".join(lines)) + "</pre>"


class HtmlReport:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        report = yield
        # the teardown report: the rows are final (every Hypothesis example seen), and one extra per test
        if report.when == "teardown":
            rows = [row for _, row in sorted(item.stash.get(_state.ROWS_KEY, {}).items())]
            if rows:
                from pytest_html import extras

                from .report import format_table

                alpha = _state.state(self.config).settings.alpha
                table = format_table([_summary._public(r) for r in rows], alpha=alpha, width=150)
                report.extras = [*getattr(report, "extras", []), extras.html(_pre(table))]
        return report

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: Any
    ) -> None:
        st = self.config.stash.get(_state.STATE_KEY, None)
        if st is None or not st.rows:
            return
        from .report import format_table

        rows = [_summary._public(r) for r in _summary.with_outcomes(st)]
        lines = format_table(rows, alpha=st.settings.alpha, width=150)
        if lines:
            lines[0] += _summary.outcome_note(rows)
        postfix.append("<h2>forgetting summary</h2>" + _pre(lines))


def register(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        config.pluginmanager.register(HtmlReport(config), "forgetting-html")
