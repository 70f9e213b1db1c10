"""The task registry: one record per task name, lazily built.

Tasks come from these places: the built-ins (lazy ``"module:attr"`` entries, so nothing heavy
is imported until a task is used), ``@pytest_forgetting.task("name")`` in a conftest or
package, the entry-point group ``pytest_forgetting.tasks``, data tasks declared without Python
(``[tool.pytest_forgetting.tasks.NAME]``, ``--forgetting-task``; see ``tasks.declared``) and
data files named as tasks (``--retains data/test.csv:0.02``). A name registered twice by
different factories is an error; an unknown name gets a "did you mean" suggestion.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._util import suggest
from .errors import ConfigError, TaskError

if TYPE_CHECKING:
    from .tasks.base import Task

__all__ = ["ENTRY_POINT_GROUP", "REGISTRY", "Entry", "Registry", "TaskRegistry", "suggest", "task"]

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

T = TypeVar("T")


def _load_target(target: str | Callable[[], Any]) -> Callable[[], Any]:
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


@dataclass
class Entry(Generic[T]):
    """One registered name: its factory (or a lazy ``"module:attr"``), where it came from, the built object."""

    name: str
    target: str | Callable[[], T]
    origin: str
    instance: T | None = None


_Entry = Entry  # the old private name


class Registry(Generic[T]):
    """Names of lazily built objects of one kind (``what``: "task"), each built once per process.

    A name registered again from the same origin replaces the entry (a conftest imported twice); from
    another origin it is an error; an unknown name gets a "did you mean" suggestion. Thread-safe.
    Subclasses may resolve names on first use (:meth:`_resolve`) and check what a factory built
    (:meth:`_built`). :meth:`temporary` registers for the length of a ``with`` block (tests).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.entries: dict[str, Entry[T]] = {}
        self._lock = threading.RLock()

    def register(self, name: str, target: str | Callable[[], T], origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.what} name must be a non-empty string, got {name!r}")
        with self._lock:
            old = self.entries.get(name)
            if old is not None and old.origin != origin:
                raise ConfigError(
                    f"{self.what} {name!r} is registered twice: by {old.origin} and by {origin}; rename one of them"
                )
            self.entries[name] = Entry(name, target, origin)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (nothing happens when it is not registered)."""
        with self._lock:
            self.entries.pop(name, None)

    @contextlib.contextmanager
    def temporary(self, name: str, target: str | Callable[[], T], origin: str = "a test") -> Iterator[str]:
        """Register ``name`` inside the ``with`` block (yields the name); afterwards the registry is as before.

        A name already registered is replaced for the block and restored after it, whatever its origin.
        """
        with self._lock:
            previous = self.entries.pop(name, None)
            try:
                self.register(name, target, origin)
            except BaseException:
                if previous is not None:
                    self.entries[name] = previous
                raise
        try:
            yield name
        finally:
            with self._lock:
                self.entries.pop(name, None)
                if previous is not None:
                    self.entries[name] = previous

    def _resolve(self, name: Any) -> bool:
        """Register ``name`` on first use when it stands for something (False: it does not)."""
        return False

    def _built(self, name: str, entry: Entry[T], obj: Any) -> T:
        """Check what ``entry``'s factory returned; the value kept for the name."""
        return obj

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries or self._resolve(name)

    def check_name(self, name: str) -> None:
        if name not in self:
            known = self.names()
            raise ConfigError(
                f"unknown {self.what} {name!r}{suggest(name, known)}; known {self.what}s: {', '.join(known)}"
            )

    def get(self, name: str) -> T:
        """The built object (factories run once per process)."""
        self.check_name(name)
        with self._lock:
            entry = self.entries[name]
            if entry.instance is None:
                try:
                    factory = _load_target(entry.target)
                    obj = factory()
                except (TaskError, ConfigError):
                    raise
                except Exception as exc:  # a user's factory: report it as the entry's failure
                    raise TaskError(
                        f"{self.what} {name!r} could not be built ({entry.origin}): {type(exc).__name__}: {exc}"
                    ) from exc
                entry.instance = self._built(name, entry, obj)
            return entry.instance

    def forget_instances(self) -> None:
        with self._lock:
            for entry in self.entries.values():
                entry.instance = None


class TaskRegistry(Registry["Task"]):
    """The tasks: built-ins, ``@task``, the entry points (read on first look-up), ``lm-eval:NAME`` and data files."""

    def __init__(self) -> None:
        super().__init__("task")
        self._entry_points_loaded = False

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self.register(ep.name, ep.value, origin=f"entry point {ep.value}")

    def names(self) -> list[str]:
        self._load_entry_points()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return super().__contains__(name)

    def _resolve(self, name: Any) -> bool:
        return self._prefixed_task(name) or self._data_file_task(name)

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

    def _built(self, name: str, entry: Entry[Task], obj: Any) -> Task:
        from .tasks.base import Task

        if not isinstance(obj, Task):
            raise TaskError(
                f"task factory {name!r} ({entry.origin}) returned {type(obj).__name__}, not a pytest_forgetting Task"
            )
        obj.name = name
        return obj


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
