"""The plugin object of a pytest run: its settings, the lazy engine session and the rows seen.

``configure`` (from ``plugin.pytest_configure``) resolves the settings, puts one ``ForgettingPlugin``
in ``config.stash[STATE_KEY]`` and registers it, as pytest registers its ``LogXML`` or ``LFPlugin``.
Its own hooks are the report listeners (on the xdist controller the rows arrive from the workers).
The other hooks stay functions of ``plugin.py``: where a hook is registered decides its place among
the other plugins' and the conftests' implementations (header and summary lines, parametrisation
order, wrappers), and an object registered in ``pytest_configure`` comes after all of them.

Standard library and pytest only: ``plugin.py`` imports this module in every run of every project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .errors import ConfigError
from .options import Settings, resolve
from .results import CheckRow

SETTINGS_KEY = pytest.StashKey[Settings]()
STATE_KEY = pytest.StashKey["ForgettingPlugin"]()
PLUGIN_KEY = STATE_KEY  # the same key, under the name of what it holds
CHECKS_KEY = pytest.StashKey[list]()
RESULTS_KEY = pytest.StashKey[list]()
ROW_PROPERTY = "forgetting_row"
ROWS_KEY = pytest.StashKey[dict]()  # index -> row, of this item's current run
ROWS_ATTR = "forgetting_rows"  # the TestReport attribute that carries them
MARKERS = ("retains", "improves")
#: the name the plugin object is registered under (that of the row listener it replaced: its hooks are those)
PLUGIN_NAME = "forgetting-rows"

RETAINS_DOC = (
    "retains(task, max_drop, metric=None, relative=False, max_class_drop=None, max_nfr=None, split='test', "
    "slices=None, max_gap_increase=None, class_metric='recall', score_range=None): "
    "the tuned checkpoint must keep the base checkpoint's `metric` on `task` within `max_drop` "
    "(absolute, or a fraction of the base value with relative=True), optionally per class / slice "
    "(max_class_drop; class_metric='precision' budgets each class's precision instead of its recall), "
    "within a budget of negative flips (max_nfr), and without widening the gap between "
    "the best and the worst slice / class by more than max_gap_increase. score_range=(low, high) declares the "
    "range of per-example scores (bounds valid at every n instead of the bootstrap, which decides from 1,000 "
    "examples)."
)
IMPROVES_DOC = (
    "improves(task, min_gain, metric=None, relative=False, split='test', score_range=None): the tuned checkpoint "
    "must beat the base checkpoint on `task` by more than `min_gain` (proven at level alpha)."
)


class ForgettingPlugin:
    """Per-process state of a run (the lazily created ForgettingSession, the rows seen by this process),
    registered as a plugin for the hooks that collect the rows from the test reports."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._session: Any = None
        self.rows: dict[tuple[str, int], CheckRow] = {}
        self.header: dict[str, Any] = {}
        self.current_item: pytest.Item | None = None
        self.outcomes: dict[str, str] = {}  # nodeid -> pytest's outcome of its last run
        self.declared: list[tuple[Any, str]] | None = None  # parsed declarations (check, where)
        self.declared_collected = False  # their items came from collecting the anchor file itself
        self._anchor: Path | None = None
        self.interrupted = False  # a KeyboardInterrupt ended the run: the reports say so

    @property
    def anchor(self) -> Path:
        """The file declared checks hang from: pyproject.toml of the rootdir, else the ini file.

        Their ids (``pyproject.toml::retains:mnist``) then start with a real path, which is what
        ``--lf``, ``--sw``, ``--deselect`` and a pasted id need to find them again.
        """
        if self._anchor is None:
            pyproject = Path(self.config.rootpath) / "pyproject.toml"
            inipath = self.config.inipath
            self._anchor = pyproject if pyproject.is_file() or not inipath else Path(inipath)
        return self._anchor

    @property
    def session(self) -> Any:
        if self._session is None:
            from .session import ForgettingSession

            self._session = ForgettingSession(self.settings)
        return self._session

    def add_row(self, key: tuple[str, int], row: CheckRow) -> None:
        self.rows[key] = row

    def sorted_rows(self) -> list[CheckRow]:
        return [self.rows[k] for k in sorted(self.rows)]

    def collect_report(self, report: pytest.TestReport) -> None:
        """Take the rows a test report carries (``phases.attach_rows``) and pytest's outcome of the test."""
        if report.when == "setup":  # a new run of this test (a rerun too): its rows replace the last run's
            self.outcomes.pop(report.nodeid, None)
            for key in [k for k in self.rows if k[0] == report.nodeid]:
                del self.rows[key]
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        if self.outcomes.get(report.nodeid) in (None, "passed") or outcome in ("failed", "error"):
            self.outcomes[report.nodeid] = outcome
        for entry in json.loads(getattr(report, ROWS_ATTR, None) or "[]"):
            self.add_row((report.nodeid, int(entry["index"])), CheckRow.from_json(entry["row"]))

    # -- hooks (on the xdist controller the reports arrive from the workers) ---------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collect_report(report)

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True


RunState = ForgettingPlugin  # the former name


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def state(config: pytest.Config) -> ForgettingPlugin:
    return config.stash[STATE_KEY]


def collect_report(config: pytest.Config, report: pytest.TestReport) -> None:
    st = config.stash.get(STATE_KEY, None)
    if st is not None:
        st.collect_report(report)


def configure(config: pytest.Config) -> None:
    """Register the markers, resolve the settings (a bad value is a usage error) and register the plugin object."""
    config.addinivalue_line("markers", RETAINS_DOC)
    config.addinivalue_line("markers", IMPROVES_DOC)
    ini_dir = Path(config.inipath).parent if config.inipath else config.rootpath
    try:
        settings = resolve(
            config.getoption,
            config.getini,
            invocation_dir=config.invocation_params.dir,
            ini_dir=ini_dir,
            rootdir=config.rootpath,
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-forgetting: {exc}") from None
    config.stash[SETTINGS_KEY] = settings
    plugin = ForgettingPlugin(config, settings)
    config.stash[STATE_KEY] = plugin
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    from . import progress  # standard library only

    config.add_cleanup(progress.restore(progress.configure(config, settings.progress)))
    from . import distributed  # standard library only; torch.distributed only once a group exists

    config.add_cleanup(distributed.reset)  # a process group created for the run is destroyed with it
