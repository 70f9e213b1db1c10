"""Collection: the declared checks as test items, candidates as parameters, every marker validated.

A mistake in a marker or a declaration is a usage error (exit 4) before any model loads; on an
xdist worker it is handed to the controller, which raises it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import ConfigError, TaskError
from .results import CheckKind
from .state import CHECKS_KEY, MARKERS, STATE_KEY, ForgettingPlugin, state

if TYPE_CHECKING:
    from .checks import Check

# checks (and the task registry behind it) are imported where a marker or a declared check needs
# them: a suite that uses neither pays only this module at start-up

CANDIDATE_ARG = "_forgetting_candidate"


class DeclaredChecks(pytest.File):
    """The checks declared with --retains / --improves / [tool.pytest_forgetting], as children of
    the anchor file (``ForgettingPlugin.anchor``, usually pyproject.toml)."""

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


def _declared_items(
    parent: pytest.Collector, config: pytest.Config, checks: list[tuple[Any, str]]
) -> list[pytest.Item]:
    seen: dict[str, int] = {}
    items: list[pytest.Item] = []
    names: list[str | None] = [*candidates(config)] or [None]
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
            f"pytest-forgetting: {item.nodeid}: unknown marker @pytest.mark.{name} "
            f"(did you mean @pytest.mark.{close}?); "
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


def _bind(st: ForgettingPlugin, check: Check, where: str) -> Check:
    """Validate against the built task when it can be built now; data errors surface on the test."""
    from .checks import bind_task

    try:
        task = st.session.task(check.task)
    except TaskError:
        return check
    check = bind_task(check, f"{where}: @pytest.mark.{check.kind}", task)
    if check.kind == CheckKind.RETAINS:
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
                    f"{where}: task {check.task!r} has {n} examples in split {check.split!r}; "
                    f"at max_drop={check.margin:g} and alpha={st.settings.alpha:g} even identical models "
                    f"cannot PASS below n={need if need else 'infinity'}; "
                    "raise max_drop, add examples or drop --forgetting-limit"
                )
    return check


# -- usage errors on xdist workers --------------------------------------------------------------
#: where an xdist worker leaves a usage error found while collecting, for the controller to raise
_WORKER_USAGE_ERROR = "forgetting_usage_error"


def usage_error(config: pytest.Config, exc: pytest.UsageError, items: list[pytest.Item]) -> None:
    """A usage error found while collecting: raised as is, or, on an xdist worker (where raising
    crashes the worker and the controller ends in INTERNALERROR), handed to the controller, which
    raises it once (exit 4); the worker collects nothing, so nothing runs."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is None:
        raise exc
    workeroutput[_WORKER_USAGE_ERROR] = str(exc)
    items[:] = []


def raise_worker_usage_error(node: Any) -> None:
    """On the controller, when a worker goes down: the usage error it found, if any."""
    message = getattr(node, "workeroutput", {}).get(_WORKER_USAGE_ERROR)
    if message:
        raise pytest.UsageError(message)
