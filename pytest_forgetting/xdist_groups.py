"""Under pytest-xdist, the checks of one task run on one worker, which evaluates that task once.

pytest-xdist's ``--dist loadgroup`` groups tests by their ``xdist_group`` marker by renaming
``item._nodeid`` on the workers, which pytest 9.2 no longer reads: every group is lost and the tests
are spread as with ``--dist load``. This module groups without renaming anything:

* the plugin gives every checked test without an ``xdist_group`` of its own the group
  ``forgetting-TASK``, or ``forgetting-TASK@CANDIDATE`` when several tuned candidates are compared
  (``collection._group_by_task``): the checks that need the same (base, tuned, task) evaluations run
  on one worker, and two candidates of a task can run on two;
* each worker, once its collection is done, writes ``{node id: group}`` for the tests that have a
  group to a private folder (``mkdtemp``) that the controller created and named in the worker's
  ``workerinput``;
* the controller's scheduler is pytest-xdist's own ``LoadScopeScheduling`` whose *scope* of a node id
  is its group read from that file; a test without a group is a scope of its own, so ungrouped tests
  are balanced one by one as with ``--dist load``. A missing or unreadable file leaves every test
  ungrouped (the run is never worse than ``--dist load``).

It applies only when the run is distributed (``-n N``), the forgetting gate is configured (a base or
tuned checkpoint), and ``--dist`` was not given or is ``loadgroup`` (whose meaning it keeps); any other
``--dist`` keeps xdist's scheduler, and projects that do not use the gate never see it. xdist is
imported only when its scheduler hook is called.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from ._util import atomic_write

#: the key of ``workerinput`` that names the folder of the groups files
WORKERINPUT_KEY = "forgetting_groups_dir"
#: what --dist was on the command line (before pytest-xdist turns "no" into "load" for -n N)
_DIST_CHOICE = pytest.StashKey[str]()
#: --dist values this module schedules (None: --dist was not given)
TAKES_OVER = ("no", "loadgroup")
_MAX_FILE_BYTES = 64 * 2**20


def note_dist_choice(early_config: pytest.Config) -> None:
    """Remember whether the user chose ``--dist`` (called before pytest-xdist rewrites the option)."""
    ns = getattr(early_config, "known_args_namespace", None)
    dist = str(getattr(ns, "dist", "no") or "no")
    if getattr(ns, "distload", False):  # the old -d flag: --dist load
        dist = "load"
    early_config.stash[_DIST_CHOICE] = dist


def configure(config: pytest.Config, gate_configured: bool) -> None:
    """Register the controller's or the worker's half, when this run is one the module applies to."""
    pm = config.pluginmanager
    if not pm.hasplugin("xdist"):
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        folder = workerinput.get(WORKERINPUT_KEY)
        if isinstance(folder, str) and folder:
            pm.register(_WorkerGroups(folder, str(workerinput.get("workerid", "gw"))), "forgetting-xdist-groups")
        return
    if not gate_configured or config.getoption("dist", "no") == "no" or not config.getoption("tx", None):
        return  # not distributed, or a project that does not use the gate
    if config.stash.get(_DIST_CHOICE, "no") not in TAKES_OVER:
        return  # the user chose xdist's scheduler
    pm.register(_ControllerGroups(), "forgetting-xdist-groups")


def group_of(item: pytest.Item) -> str | None:
    """The group of a test: the names of its ``xdist_group`` markers (as loadgroup joins them), or None."""
    names = set()
    for mark in item.iter_markers("xdist_group"):
        name = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
        names.add(str(name))
    return "_".join(sorted(names)) if names else None


class _WorkerGroups:
    """Worker side: write the groups of the collected tests before xdist reports the collection."""

    def __init__(self, folder: str, workerid: str) -> None:
        self.folder = folder
        self.workerid = "".join(c for c in workerid if c.isalnum() or c in "-_") or "gw"

    @pytest.hookimpl(tryfirst=True)  # before xdist's worker sends "collectionfinish" to the controller
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        groups = {item.nodeid: g for item in session.items if (g := group_of(item)) is not None}
        try:  # the folder is the controller's: not created again when it is gone
            atomic_write(os.path.join(self.folder, f"{self.workerid}.json"), json.dumps(groups), makedirs=False)
        except OSError:  # the controller then sees no groups: tests are balanced one by one
            pass


class _ControllerGroups:
    """Controller side: the folder of the groups files, the workers' input and the scheduler."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="forgetting-xdist-")  # mode 0700, an unpredictable name

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKERINPUT_KEY] = self.folder

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        try:
            from xdist.scheduler import LoadScopeScheduling
        except ImportError:  # an xdist without it: its own default
            return None
        return _scheduler_class(LoadScopeScheduling)(config, log, self.read_groups)

    def read_groups(self) -> dict[str, str]:
        """{node id: scope} from every worker's file (their collections are the same; xdist checks it)."""
        groups: dict[str, str] = {}
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return groups
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                path = os.path.join(self.folder, name)
                if os.path.getsize(path) > _MAX_FILE_BYTES:
                    continue
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                groups.update(
                    {k: f"xdist_group:{v}" for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
                )
        return groups

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _scheduler_class(base: type) -> type:
    class TaskGroupScheduling(base):
        """pytest-xdist's scope scheduling, a test's scope being its group (else the test itself)."""

        def __init__(self, config: pytest.Config, log: Any, read_groups: Callable[[], dict[str, str]]) -> None:
            super().__init__(config, log)
            self._read_groups = read_groups
            self._groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # first called once every worker has reported its collection
                self._groups = self._read_groups()
            return self._groups.get(nodeid, nodeid)

    return TaskGroupScheduling
