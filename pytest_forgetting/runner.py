"""What the pytest hooks hand off to: settings, marker validation, running checks, the summary.

Per-test results travel as one JSON attribute of every test report (``report.forgetting_rows``;
pytest-xdist serialises report attributes, so they reach the controller); only the controller
prints the table and writes the reports, and it puts the rows on the JUnit testsuite, where
``junit_family=xunit2`` allows properties, once per check whatever the reruns.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from .errors import ConfigError, ForgettingError, TaskError
from .options import Settings, resolve
from .results import CheckRow, Outcome, Verdict, outcome_for

SETTINGS_KEY = pytest.StashKey[Settings]()
STATE_KEY = pytest.StashKey["RunState"]()
CHECKS_KEY = pytest.StashKey[list]()
RESULTS_KEY = pytest.StashKey[list]()
ROW_PROPERTY = "forgetting_row"
ROWS_KEY = pytest.StashKey[dict]()  # index -> row, of this item's current run
ROWS_ATTR = "forgetting_rows"  # the TestReport attribute that carries them
MARKERS = ("retains", "improves")

RETAINS_DOC = (
    "retains(task, max_drop, metric=None, relative=False, max_class_drop=None, max_nfr=None, split='test', slices=None, "
    "max_gap_increase=None, class_metric='recall', score_range=None): "
    "the tuned checkpoint must keep the base checkpoint's `metric` on `task` within `max_drop` "
    "(absolute, or a fraction of the base value with relative=True), optionally per class / slice "
    "(max_class_drop; class_metric='precision' budgets each class's precision instead of its recall), within a budget of negative flips (max_nfr), and without widening the gap between "
    "the best and the worst slice / class by more than max_gap_increase. score_range=(low, high) declares the range of "
    "per-example scores (bounds valid at every n instead of the bootstrap, which decides from 1,000 examples)."
)
IMPROVES_DOC = (
    "improves(task, min_gain, metric=None, relative=False, split='test', score_range=None): the tuned checkpoint must beat "
    "the base checkpoint on `task` by more than `min_gain` (proven at level alpha)."
)

if TYPE_CHECKING:
    from .checks import Check

# checks (and the task registry behind it) are imported where a marker or a declared check needs
# them: a suite that uses neither pays only this module at start-up


class ForgettingInconclusiveWarning(pytest.PytestWarning):
    """A check could not be settled with the examples available (``--forgetting-inconclusive warn``)."""


class RunState:
    """Per-process state: the lazily created ForgettingSession and the rows seen by this process."""

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


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# -- configure ----------------------------------------------------------------------------------
def configure(config: pytest.Config) -> None:
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
    config.stash[STATE_KEY] = RunState(config, settings)
    config.pluginmanager.register(_RowListener(config), "forgetting-rows")
    from . import progress  # standard library only

    config.add_cleanup(progress.restore(progress.configure(config, settings.progress)))
    from . import distributed  # standard library only; torch.distributed only once a group exists

    config.add_cleanup(distributed.reset)  # a process group created for the run is destroyed with it


class _RowListener:
    """Collects rows from test reports (on the xdist controller they arrive from the workers)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        collect_report(self.config, report)

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        st = self.config.stash.get(STATE_KEY, None)
        if st is not None:
            st.interrupted = True


def state(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]


# -- collection ---------------------------------------------------------------------------------
CANDIDATE_ARG = "_forgetting_candidate"


class DeclaredChecks(pytest.File):
    """The checks declared with --retains / --improves / [tool.pytest_forgetting], as children of
    the anchor file (``RunState.anchor``, usually pyproject.toml)."""

    def collect(self) -> list[pytest.Item]:
        st = state(self.config)
        checks = parse_declarations(self.config)
        st.declared_collected = True
        return _declared_items(self, self.config, checks)


class CheckItem(pytest.Item):
    """A declared check as a real test item: selectable with -k, reported, run under xdist."""

    def __init__(self, *, check: Check, candidate: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stash[CHECKS_KEY] = [check]
        self.candidate = candidate

    def setup(self) -> None:
        pass  # the plugin's pytest_runtest_setup hook evaluates the checks of every item, this one too

    def runtest(self) -> None:
        pass  # and its pytest_runtest_call hook turns the verdicts into the outcome

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, self.name

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, pytest.fail.Exception):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


def candidates(config: pytest.Config) -> list[str]:
    """Names of the tuned candidates when there are several (tests are parametrised over them)."""
    from .options import candidate_name

    refs = state(config).settings.tuned_ckpts
    return [candidate_name(r, refs) for r in refs] if len(refs) > 1 else []


def generate_tests(metafunc: pytest.Metafunc) -> None:
    """Several --tuned-ckpt: every marked test and every user of tuned_model runs once per candidate."""
    names = candidates(metafunc.config)
    if not names:
        return
    marked = any(metafunc.definition.get_closest_marker(name) is not None for name in MARKERS)
    if marked and CANDIDATE_ARG not in metafunc.fixturenames:
        metafunc.fixturenames.append(CANDIDATE_ARG)  # the checks of a marked test run per candidate
    if CANDIDATE_ARG in metafunc.fixturenames and (marked or "tuned_model" in metafunc.fixturenames):
        metafunc.parametrize(CANDIDATE_ARG, names, ids=names, scope="session")


def parse_declarations(config: pytest.Config) -> list[tuple[Any, str]]:
    """The checks declared on the command line and in pyproject.toml, validated once per run."""
    st = state(config)
    if st.declared is not None:
        return st.declared
    s = st.settings
    pyproject = Path(config.rootpath) / "pyproject.toml"
    if not (s.retains or s.improves or _mentions_plugin(pyproject)):
        st.declared = []
        return []  # the common case of an unrelated suite: no parsing, no imports
    from .checks import parse_check
    from .declarations import check_duplicates, load_pyproject, parse_spec

    try:
        decls = [parse_spec("retains", x) for x in s.retains] + [parse_spec("improves", x) for x in s.improves]
        decls += load_pyproject(pyproject)
        checks = [(_bind(st, parse_check(d.kind, d.kwargs, d.where), d.where), d.where) for d in decls]
        check_duplicates(checks)
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-forgetting: {exc}") from None
    st.declared = checks
    return checks


def declared_name(check: Check) -> str:
    """``retains:mnist``, ``retains:news:f1_macro``: no brackets, which pytest 9 reads as parameters."""
    metric = "" if check.metric in ("", "accuracy") else f":{check.metric}"
    return f"{check.kind}:{check.task}{metric}"


def _declared_items(parent: pytest.Collector, config: pytest.Config, checks: list[tuple[Any, str]]) -> list[pytest.Item]:
    seen: dict[str, int] = {}
    items: list[pytest.Item] = []
    names = candidates(config) or [None]
    for check, _ in checks:
        label = declared_name(check)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        for cand in names:
            name = label if cand is None else f"{label}@{cand}"
            item = CheckItem.from_parent(parent, name=name, check=check, candidate=cand)
            _group_by_task(item, check)
            items.append(item)
    return items


def _group_by_task(item: pytest.Item, check: Check) -> None:
    """Under ``pytest -n N`` the checks of one (task, candidate) share a worker (and its evaluations).

    The group is ``forgetting-TASK``, or ``forgetting-TASK@CANDIDATE`` when several tuned candidates
    are compared: each candidate's evaluations are its own, so the candidates of one task can run
    on two workers (the base's evaluation of the task is still computed once: the cache and its
    lock). Only when pytest-xdist is active (its marker is registered then, so --strict-markers
    holds) and the test has no xdist_group of its own.
    """
    if item.config.pluginmanager.hasplugin("xdist") and item.get_closest_marker("xdist_group") is None:
        callspec = getattr(item, "callspec", None)
        candidate = callspec.params.get(CANDIDATE_ARG) if callspec is not None else getattr(item, "candidate", None)
        suffix = f"@{candidate}" if candidate else ""
        item.add_marker(pytest.mark.xdist_group(name=f"forgetting-{check.task}{suffix}"))


def declared_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """``pytest pyproject.toml::retains:mnist``: the anchor file named on the command line collects its checks."""
    st = parent.config.stash.get(STATE_KEY, None)
    if st is None or file_path != st.anchor or not parent.session.isinitpath(file_path):
        return None  # walked past it: collect_checks adds the checks once every conftest is loaded
    return DeclaredChecks.from_parent(parent, path=file_path)


def declared_checks(session: pytest.Session, config: pytest.Config) -> list[pytest.Item]:
    """Items for the declared checks, collected through pytest's own collection hooks.

    Going through ``pytest_make_collect_report`` / ``pytest_collectreport`` counts them in
    "collected N items" and lets ``--lf`` skip them when only other files failed last time.
    """
    st = state(config)
    if st.declared_collected or not parse_declarations(config):
        return []
    parent = DeclaredChecks.from_parent(session, path=st.anchor)
    rep = session.ihook.pytest_make_collect_report(collector=parent)
    session.ihook.pytest_collectreport(report=rep)
    if not rep.passed:
        return []
    return [x for x in rep.result if isinstance(x, pytest.Item)]


def _mentions_plugin(pyproject: Path) -> bool:
    try:
        return b"pytest_forgetting" in pyproject.read_bytes()
    except OSError:
        return False


def collect_checks(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add declared checks, then parse and validate every marker: a mistake is a usage error before any model loads."""
    items.extend(declared_checks(session, config))
    st = state(config)
    for item in items:
        if isinstance(item, CheckItem):
            continue
        checks: list[Check] = []
        for mark in item.iter_markers():
            if mark.name not in MARKERS:
                _refuse_marker_typo(config, item, mark.name)
                continue
            from .checks import parse_check

            try:
                check = parse_check(mark.name, mark.kwargs, f"{item.nodeid}: @pytest.mark.{mark.name}", mark.args)
                check = _bind(st, check, item.nodeid)
            except ConfigError as exc:
                raise pytest.UsageError(f"pytest-forgetting: {exc}") from None
            checks.append(check)
        if checks:
            # iter_markers yields the closest first; keep the source order of the decorators
            item.stash[CHECKS_KEY] = list(reversed(checks))
            _group_by_task(item, checks[-1])


def refuse_missing_checkpoints(config: pytest.Config, items: list[pytest.Item]) -> None:
    """No --tuned-ckpt, or a checkpoint path with nothing there: one usage error (exit 4), not an ERROR per test.

    Only for checkpoints some selected test needs (checks need both, the fixtures their own), so
    it runs once collection is final (after -k / -m / --deselect); not under --collect-only,
    which only lists tests.
    """
    if config.getoption("collectonly", False) or not items:
        return
    from .mismatch import missing_checkpoints, needs_of

    needs = needs_of(items, lambda item: bool(item.stash.get(CHECKS_KEY, None)))
    if not (needs["base"] or needs["tuned"]):
        return
    problem = missing_checkpoints(state(config).settings, needs)
    if problem:
        raise pytest.UsageError(f"pytest-forgetting: {problem}")


_TYPO_MEMO = pytest.StashKey[dict]()


def _refuse_marker_typo(config: pytest.Config, item: pytest.Item, name: str) -> None:
    """``@pytest.mark.retain`` / ``retainss`` / ``improve``: a usage error, not a green test without checks.

    A marker the project registered itself (ini ``markers``) is meant; other names are compared
    once per run, and only names of a similar length and first letter reach difflib.
    """
    memo = config.stash.setdefault(_TYPO_MEMO, {})
    if name not in memo:
        memo[name] = _close_marker(config, name)
    close = memo[name]
    if close:
        raise pytest.UsageError(
            f"pytest-forgetting: {item.nodeid}: unknown marker @pytest.mark.{name} (did you mean @pytest.mark.{close}?); "
            f"as written the test would run without any check: rename it to {close}, or register {name!r} under "
            "the ini 'markers' if it is another plugin's"
        )


def _close_marker(config: pytest.Config, name: str) -> str | None:
    low = name.lower()
    if not (4 <= len(low) <= 11 and low[0] in "ri") or low in MARKERS:
        return low if low in MARKERS else None  # (Retains: the case is the typo)
    registered = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    if name in registered:
        return None
    from ._util import close_matches

    close = close_matches(low, MARKERS, n=1, cutoff=0.8)
    return close[0] if close else None


def _bind(st: RunState, check: Check, where: str) -> Check:
    """Validate against the built task when it can be built now; data errors surface on the test."""
    from .checks import bind_task

    try:
        task = st.session.task(check.task)
    except TaskError:
        return check
    check = bind_task(check, f"{where}: @pytest.mark.{check.kind}", task)
    if check.kind == "retains":
        from .stats import min_n_to_pass

        n = task.size(check.split)
        if st.settings.limit:
            n = min(n, st.settings.limit)
        metric = task.metrics[check.metric]
        if n == 0:
            raise ConfigError(f"{where}: task {check.task!r} split {check.split!r} has no examples")
        if metric.bounded and not check.relative:  # 0/1 and bounded aggregate metrics alike (stats.min_n_to_pass)
            need = min_n_to_pass(check.margin, st.settings.alpha)
            if need is None or n < need:
                raise ConfigError(
                    f"{where}: task {check.task!r} has {n} examples in split {check.split!r}; at max_drop={check.margin:g} "
                    f"and alpha={st.settings.alpha:g} even identical models cannot PASS below n={need if need else 'infinity'}; "
                    "raise max_drop, add examples or drop --forgetting-limit"
                )
    return check


# -- running ------------------------------------------------------------------------------------
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
    row = CheckRow.from_dict({
        "test": item.nodeid, "task": check.task, "split": check.split, "metric": check.metric or "-", "kind": check.kind,
        "candidate": candidate, "n": 0, "base": None, "tuned": None, "drop": None, "ci_low": None, "ci_high": None,
        "margin": check.margin, "relative": check.relative, "nfr": None, "verdict": Verdict.ERROR, "reason": reason,
        "n_needed": None, "worst_classes": [], "flipped_ids": [], "base_cached": False, "base_eval_s": 0.0,
        "tuned_eval_s": 0.0, "higher_is_better": True, "outcome": Outcome.ERROR})
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
        setattr(report, ROWS_ATTR, json.dumps(
            [{"index": i, "row": r.to_json()} for i, r in sorted(rows.items())], sort_keys=True, default=_json_default))


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


def collect_report(config: pytest.Config, report: pytest.TestReport) -> None:
    st = config.stash.get(STATE_KEY, None)
    if st is None:
        return
    if report.when == "setup":  # a new run of this test (a rerun too): its rows replace the last run's
        st.outcomes.pop(report.nodeid, None)
        for key in [k for k in st.rows if k[0] == report.nodeid]:
            del st.rows[key]
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    if st.outcomes.get(report.nodeid) in (None, "passed") or outcome in ("failed", "error"):
        st.outcomes[report.nodeid] = outcome
    for entry in json.loads(getattr(report, ROWS_ATTR, None) or "[]"):
        st.add_row((report.nodeid, int(entry["index"])), CheckRow.from_json(entry["row"]))


# -- end of run ---------------------------------------------------------------------------------
def header(st: RunState) -> dict[str, Any]:
    from . import __version__

    s = st.settings
    sess = st._session
    fps: dict[str, str] = {}
    if sess is not None:
        for slot in ([sess.base] if sess.base else []) + list(sess.candidates.values()):
            if slot._fingerprint:
                fps[slot.display] = slot._fingerprint
    rows = st.sorted_rows()
    for row in rows:
        fps.update(row.get("_fingerprints", {}))
    return {
        "base_ckpt": {"ref": s.base_ckpt, "fingerprint": fps.get(s.base_ckpt or "", "")},
        "tuned_ckpts": [{"ref": r, "fingerprint": fps.get(r, ""), "name": _cand_name(r, s.tuned_ckpts)} for r in s.tuned_ckpts],
        "device": next((row.get("_device") for row in rows if row.get("_device")), s.device),
        "dtype": s.dtype,
        "alpha": s.alpha,
        "torch_version": _torch_version(),
        "plugin_version": __version__,
        "settings_sources": settings_sources(st),
    }


def settings_sources(st: RunState) -> dict[str, str]:
    """Where each setting came from; checks declared in [tool.pytest_forgetting] say ``pyproject``.

    Read from the file itself, so the xdist controller (which collects nothing) says the same.
    """
    sources = dict(st.settings.sources)
    pyproject = Path(st.config.rootpath) / "pyproject.toml"
    kinds: set[str] = set()
    if _mentions_plugin(pyproject):
        from .declarations import load_pyproject

        try:
            kinds = {d.kind for d in load_pyproject(pyproject)}
        except ConfigError:  # reported where the checks are parsed
            pass
        try:
            if b"[tool.pytest_forgetting.tasks." in pyproject.read_bytes():  # data tasks declared there
                kinds.add("tasks")
        except OSError:
            pass
    for kind in sorted(kinds):
        source = sources.get(kind, "default")
        sources[kind] = "pyproject" if source == "default" else f"{source}+pyproject"
    return dict(sorted(sources.items()))


def _cand_name(ref: str, refs: tuple[str, ...]) -> str:
    from .options import candidate_name

    return candidate_name(ref, refs) if len(refs) > 1 else ""


def _torch_version() -> str:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return ""


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the table and write the reports. Never raises: a report problem is one line, not a crash."""
    if is_worker(config) or _other_rank():
        return
    st = config.stash.get(STATE_KEY, None)
    if st is None:
        return
    if not st.rows and not (st.interrupted and (st.settings.json_path or st.settings.markdown_path)):
        return  # (an interrupted run still replaces the reports, so no stale one is read as this run's)
    from . import report

    rows = [_public(r) for r in with_outcomes(st)]
    tr = terminalreporter
    tr.write_sep("=", "forgetting summary")
    # the table is wider than 80 columns anyway; full test names matter more than wrapping
    width = max(getattr(getattr(tr, "_tw", None), "fullwidth", 0), 150)
    lines = report.format_table(rows, alpha=st.settings.alpha, width=width)
    if lines:
        lines[0] += outcome_note(rows)
    for line in lines:
        tr.write_line(line)
    if st.interrupted:
        tr.write_line("forgetting: the run was interrupted: these results are partial (the reports say \"interrupted\"); "
                      "run it to the end before trusting them", red=True)
    from .mismatch import run_warnings  # a tuned checkpoint identical to the base, a base at chance

    notes = run_warnings(st.sorted_rows())
    for note in notes:
        tr.write_line(f"forgetting: warning: {note}", yellow=True)
    head = header(st)
    head["interrupted"] = st.interrupted
    head["warnings"] = notes
    s = st.settings
    outputs = ((s.json_path, lambda p: report.write_json(p, head, rows)),
               (s.markdown_path, lambda p: report.write_markdown(p, head, rows)),
               (s.plot_path, lambda p: report.write_plot(p, rows, alpha=s.alpha)))
    for path, write in outputs:
        if not path:
            continue
        try:
            write(path)
            tr.write_line(f"forgetting: wrote {path}")
        except Exception as exc:  # noqa: BLE001 - the run's results must not be lost to a report error
            from .escape import terminal

            tr.write_line(f"forgetting: could not write {terminal(path)}: {terminal(exc)}", red=True)


def junit_suite_properties(config: pytest.Config) -> None:
    """Every row as properties of the JUnit testsuite: valid under every junit_family, one set per check.

    pytest's own per-test properties (``record_property``) are invalid under ``xunit2``, pytest's
    default, and repeat with every rerun; here each check's final row gives one set of
    ``forgetting_*`` properties, each set starting with ``forgetting_test``.
    """
    st = config.stash.get(STATE_KEY, None)
    if st is None or not st.rows or is_worker(config) or _other_rank():
        return
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest without it
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return  # no --junitxml
    from .report import junit_properties

    for row in with_outcomes(st):
        for name, value in junit_properties(_public(row)):
            xml.add_global_property(name, value)


def _other_rank() -> bool:
    """A torch.distributed rank other than 0: rank 0 alone prints the table and writes the reports."""
    from . import distributed  # no torch import

    return distributed.rank() > 0


def with_outcomes(st: RunState) -> list[CheckRow]:
    """The rows, each with ``pytest_outcome``: what pytest made of its test (the body can fail a passing check)."""
    for key, row in st.rows.items():
        outcome = st.outcomes.get(str(row.get("test")), "error" if row.get("verdict") == Verdict.ERROR else "")
        st.rows[key] = replace(row, pytest_outcome=outcome)
    return st.sorted_rows()


def outcome_note(rows: list[CheckRow]) -> str:
    """So that the summary line never reads green while pytest failed the tests it describes."""
    by_test: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_test.setdefault(str(row.get("test")), []).append(row)
    odd = [t for t, rs in by_test.items() if rs[0].get("pytest_outcome") in ("failed", "error")
           and all(r.get("outcome") in ("passed", "warned") for r in rs)]
    if not odd:
        return ""
    many = len(odd) != 1
    return (f"; pytest: {len(odd)} test{'s' if many else ''} with passing checks failed "
            f"(in {'their bodies' if many else 'its body'}, fixtures or teardown: see pytest's summary)")


def _public(row: CheckRow) -> CheckRow:
    return row.public()


def report_header(config: pytest.Config) -> list[str]:
    st = config.stash.get(STATE_KEY, None)
    if st is None or is_worker(config):
        return []
    s = st.settings
    if not (s.base_ckpt or s.tuned_ckpts):
        return []
    src = s.sources
    device = s.device
    if device == "auto" and config.getoption("collectonly", False):
        device = "auto (not probed under --collect-only, which never imports torch)"
    elif device == "auto":
        import torch

        device = "auto -> cuda" if torch.cuda.is_available() else "auto -> cpu (no CUDA device)"
    lines = [f"forgetting: base={s.base_ckpt} ({src.get('base_ckpt')}), tuned={', '.join(s.tuned_ckpts) or '-'} ({src.get('tuned_ckpts')})"]
    lines.append(f"forgetting: device={device} ({src.get('device')}), dtype={s.dtype}, alpha={s.alpha:g}, batch_size={s.batch_size}, "
                 f"inconclusive={s.inconclusive}, cache={'off' if s.no_cache else s.cache_dir}")
    if s.device_map:
        lines.append(f"forgetting: device_map={s.device_map} ({src.get('device_map')})"
                     + (f", max_memory={s.max_memory} ({src.get('max_memory')})" if s.max_memory else ""))
    from .escape import terminal  # checkpoint paths are chosen by whoever names the files

    return [terminal(line) for line in lines]
