"""pytest-html integration: the summary table in the report, and each test's rows as its extras.

Registered by ``plugin.pytest_configure`` only when pytest-html is active and ``--html`` is given:
its hooks (``pytest_html_*``) would be unknown hooks without it, and nothing here is imported
otherwise.
"""

from __future__ import annotations

import html
from typing import Any

import pytest

from . import runner


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
            rows = [row for _, row in sorted(item.stash.get(runner.ROWS_KEY, {}).items())]
            if rows:
                from pytest_html import extras

                from .report import format_table

                alpha = runner.state(self.config).settings.alpha
                table = format_table([runner._public(r) for r in rows], alpha=alpha, width=150)
                report.extras = [*getattr(report, "extras", []), extras.html(_pre(table))]
        return report

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str], session: Any) -> None:
        st = self.config.stash.get(runner.STATE_KEY, None)
        if st is None or not st.rows:
            return
        from .report import format_table

        rows = [runner._public(r) for r in runner.with_outcomes(st)]
        lines = format_table(rows, alpha=st.settings.alpha, width=150)
        if lines:
            lines[0] += runner.outcome_note(rows)
        postfix.append("<h2>forgetting summary</h2>" + _pre(lines))


def register(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("html") and config.getoption("htmlpath", None):
        config.pluginmanager.register(HtmlReport(config), "forgetting-html")
