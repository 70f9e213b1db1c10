"""Reports of a forgetting run: terminal table, failure messages, JSON, Markdown, PNG, JUnit.

One module per output, on shared formatting:

* :mod:`.format`: rows as :class:`~pytest_forgetting.results.CheckRow` (:func:`as_row`), their order
  (:func:`sort_rows`) and counts, number and interval texts, verdict texts, test names;
* :mod:`.table`: the terminal table (:func:`format_table`), where the table is drawn, with the ranking of candidates;
* :mod:`.message`: :func:`failure_message`; :mod:`.json`: :func:`build_json`, :func:`dumps_json`, :func:`write_json`;
* :mod:`.markdown`: :func:`format_markdown`, :func:`write_markdown`; :mod:`.plot`: :func:`write_plot`;
* :mod:`.junit`: :func:`junit_properties`.

Everything here works on plain, JSON-serialisable *rows* (one per marker or check), so the
same functions serve a single process and the pytest-xdist controller, which receives the
rows from its workers in whatever order they finish. Every report sorts the rows first
(:func:`sort_rows`), which is what makes the output identical with and without xdist.

A row is a :class:`pytest_forgetting.results.CheckRow` (whose docstring lists every field and
when it is present), read here through its typed attributes, or any mapping with the same keys: the
functions take plain dicts too (:func:`as_row`), and tolerate missing or odd values (an unknown verdict
reads ERROR). A *drop* is signed so that positive means worse; for ``improves`` rows the gain is
``-drop`` and the margin is ``-min_gain`` (:attr:`CheckRow.gain`, :attr:`CheckRow.min_gain`).

Every string of a row that a checkpoint, a data file or a pull request can choose (test ids,
task, split, metric, class and candidate names, example ids, reasons) goes through
:mod:`pytest_forgetting.escape` on its way into the terminal, Markdown, the PNG and the JUnit
properties; the JSON report keeps the raw values. Files are written by the one
:func:`pytest_forgetting._util.atomic_write`.

No heavy imports: this package is loaded with the plugin, in every pytest run. matplotlib is
imported inside :func:`write_plot` only.
"""

from __future__ import annotations

import os  # noqa: F401  (``report.os``: tests patch ``os.replace`` through it, as with the single module)

from .format import VERDICTS, Row, as_row, sort_rows, summary_counts  # noqa: F401  (VERDICTS, Row, as_row)
from .json import build_json, dumps_json, write_json
from .junit import _ROW_KEYS, junit_properties  # noqa: F401  (_ROW_KEYS: the JUnit order, read by the tests)
from .markdown import format_markdown, write_markdown
from .message import failure_message
from .plot import write_plot
from .table import format_table

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
