"""pytest hooks of pytest-forgetting. Each hands off to a module named for what it does.

``state`` (the plugin object of a run, registered by ``pytest_configure``, with the report
listeners), ``collection``, ``phases`` and ``summary``. The hooks below stay functions of this
module, registered when pytest loads it: their place among the other plugins' and the conftests'
implementations (the order of header and summary lines, of parametrisations, of wrappers) is the
one they have always had, which an object registered in ``pytest_configure`` would change.

Importing this module must stay cheap: pytest imports every installed plugin in every run of
every project, so torch, transformers and datasets are imported only where they are used.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import collection, options, phases, state, summary
from .fixtures import _forgetting_candidate, base_model, finetune, forgetting, tuned_model  # noqa: F401 (fixtures)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # the first hook after our options are known and before conftests load: a mis-chosen rootdir stops here
    from . import xdist_groups
    from .invocation import rootdir_mixup

    xdist_groups.note_dist_choice(early_config)  # before pytest-xdist turns --dist "no" into "load" for -n N
    problem = rootdir_mixup(early_config)
    if problem:
        raise pytest.UsageError(f"pytest-forgetting: {problem}")


def pytest_configure(config: pytest.Config) -> None:
    state.configure(config)
    from . import xdist_groups

    settings = config.stash[state.SETTINGS_KEY]
    # -n N: a task's checks on one worker
    xdist_groups.configure(config, gate_configured=bool(settings.base_ckpt or settings.tuned_ckpts))
    if config.getoption("htmlpath", None):  # pytest-html's --html: the table and rows go in its report
        from . import htmlreport

        htmlreport.register(config)
    from .tasks import declared  # standard library only; reads data only for declared tasks

    declared.configure(config)


def pytest_cmdline_main(config: pytest.Config) -> Any:
    if config.getoption("forgetting_list_tasks", None):
        from .tasks.declared import list_tasks_main

        return list_tasks_main(config)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    return summary.report_header(config)


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so declared checks can be selected
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        collection.collect_checks(session, config, items)
    except pytest.UsageError as exc:
        collection.usage_error(config, exc, items)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker sends its collection to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    try:
        collection.refuse_missing_checkpoints(session.config, session.items)  # the selected tests' checkpoints exist
    except pytest.UsageError as exc:
        collection.usage_error(session.config, exc, session.items)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, on the controller
def pytest_testnodedown(node: Any, error: Any) -> None:
    collection.raise_worker_usage_error(node)  # a usage error an xdist worker found while collecting


def pytest_collect_file(file_path: Any, parent: pytest.Collector) -> Any:
    return collection.declared_file(file_path, parent)  # one path comparison for every other file


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    collection.generate_tests(metafunc)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # a hook, not an autouse fixture: unmarked tests (most of a suite) pay one dict lookup, not a fixture
    phases.run_item_checks(item)  # setup phase: a bad input is an ERROR of this test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    phases.enforce(item)
    with phases.current_item(item):
        try:
            return (yield)
        except pytest.fail.Exception as exc:
            phases.show_notes(exc)  # e.g. Hypothesis' falsifying example under @given
            raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    phases.attach_rows(item, report)  # rows travel on the report (to the xdist controller too)
    return report


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
def pytest_sessionfinish(session: pytest.Session) -> None:
    summary.junit_suite_properties(session.config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary.terminal_summary(terminalreporter, config)
