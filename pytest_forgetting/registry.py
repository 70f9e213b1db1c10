"""The task registry: one record per task name, lazily built.

Tasks come from these places: the built-ins (lazy ``"module:attr"`` entries, so nothing heavy
is imported until a task is used), ``@pytest_forgetting.task("name")`` in a conftest or
package, the entry-point group ``pytest_forgetting.tasks``, data tasks declared without Python
(``[tool.pytest_forgetting.tasks.NAME]``, ``--forgetting-task``; see ``tasks.declared``) and
data files named as tasks (``--retains data/test.csv:0.02``). A name registered twice by
different factories is an error; an unknown name gets a "did you mean" suggestion.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ._util import suggest
from .errors import ConfigError, TaskError

ENTRY_POINT_GROUP = "pytest_forgetting.tasks"

_BUILTINS: dict[str, str] = {
    "digits": "pytest_forgetting.tasks.builtin:digits",
    "digits-28": "pytest_forgetting.tasks.builtin:digits_28",
    "mnist": "pytest_forgetting.tasks.builtin:mnist",
    "fashion-mnist": "pytest_forgetting.tasks.builtin:fashion_mnist",
    "python-docs": "pytest_forgetting.tasks.lm:python_docs",
    "bbc-news": "pytest_forgetting.tasks.builtin_text:bbc_news",
    "bbc-news-probe": "pytest_forgetting.tasks.builtin_text:bbc_news_probe",
    "rotten-tomatoes": "pytest_forgetting.tasks.builtin_text:rotten_tomatoes",
    "rotten-tomatoes-probe": "pytest_forgetting.tasks.builtin_text:rotten_tomatoes_probe",
    "wnut16": "pytest_forgetting.tasks.builtin_text:wnut16",
}


def _load_target(target: str | Callable[[], Any]) -> Callable[[], Any]:
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


@dataclass
class _Entry:
    name: str
    target: str | Callable[[], Any]
    origin: str
    instance: Any = None


@dataclass
class TaskRegistry:
    entries: dict[str, _Entry] = field(default_factory=dict)
    _entry_points_loaded: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def register(self, name: str, target: str | Callable[[], Any], origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"task name must be a non-empty string, got {name!r}")
        with self._lock:
            old = self.entries.get(name)
            if old is not None and old.origin != origin:
                raise ConfigError(
                    f"task {name!r} is registered twice: by {old.origin} and by {origin}; rename one of them"
                )
            self.entries[name] = _Entry(name, target, origin)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self.register(ep.name, ep.value, origin=f"entry point {ep.value}")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self.entries or self._prefixed_task(name) or self._data_file_task(name)

    def _prefixed_task(self, name: Any) -> bool:
        """``lm-eval:NAME``: a task or group of lm-evaluation-harness, registered on first use (built lazily)."""
        prefix = "lm-eval:"
        if not isinstance(name, str) or not name.startswith(prefix) or len(name) == len(prefix):
            return False
        import functools

        self.register(name, functools.partial(_lm_eval_task, name[len(prefix) :]), origin="lm-evaluation-harness")
        return True

    def _data_file_task(self, name: Any) -> bool:
        """A data file's path as the task name (default columns text / label / id): registered on first use.

        Raises ConfigError for a name with a data suffix whose file does not exist.
        """
        if not isinstance(name, str) or not name:
            return False
        from .tasks.declared import path_task, register

        spec = path_task(name)
        if spec is None:
            return False
        register(spec)
        return True

    def check_name(self, name: str) -> None:
        if name not in self:
            raise ConfigError(f"unknown task {name!r}{suggest(name, self.names())}; known tasks: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        """The built task (factories run once per process)."""
        from .tasks.base import Task

        self.check_name(name)
        with self._lock:
            entry = self.entries[name]
            if entry.instance is None:
                try:
                    factory = _load_target(entry.target)
                    task = factory()
                except (TaskError, ConfigError):
                    raise
                except Exception as exc:  # a user's factory: report it as the task's failure
                    raise TaskError(f"task {name!r} could not be built ({entry.origin}): {type(exc).__name__}: {exc}") from exc
                if not isinstance(task, Task):
                    raise TaskError(f"task factory {name!r} ({entry.origin}) returned {type(task).__name__}, not a pytest_forgetting Task")
                task.name = name
                entry.instance = task
            return entry.instance

    def forget_instances(self) -> None:
        with self._lock:
            for entry in self.entries.values():
                entry.instance = None


def _lm_eval_task(name: str) -> Any:
    from .tasks.lm_eval import build

    return build(name)


REGISTRY = TaskRegistry()
for _name, _target in _BUILTINS.items():
    REGISTRY.register(_name, _target, origin="pytest-forgetting built-in")


def task(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering a task factory under ``name``.

    The factory runs lazily, the first time a test needs the task, and returns a Task.
    """

    def decorate(factory: Callable[[], Any]) -> Callable[[], Any]:
        origin = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
        REGISTRY.register(name, factory, origin=origin)
        return factory

    return decorate
