"""Checks declared without writing tests: ``--retains`` / ``--improves`` and ``[tool.pytest_forgetting]``.

``--retains "news:0.03,metric=f1_macro"`` is ``retains(task="news", max_drop=0.03, metric="f1_macro")``;
the pyproject table holds lists of inline tables with the marker's keywords. Both go through
the same validation as markers (``checks.parse_check``), so the errors are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

TABLE = "tool.pytest_forgetting"
KINDS = {"retains": "max_drop", "improves": "min_gain"}


@dataclass(frozen=True)
class Declaration:
    kind: str
    kwargs: dict[str, Any]
    where: str


def _scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text) if low.lstrip("+-").isdigit() else float(text)
    except ValueError:
        return text.strip()


def parse_spec(kind: str, spec: str) -> Declaration:
    """``TASK:VALUE[,key=value...]`` from the command line into marker keywords."""
    where = f"--{kind} {spec!r}"
    head, *rest = [p.strip() for p in spec.split(",")]
    task, sep, value = head.rpartition(":")  # the last colon: task names may hold one (lm-eval:NAME)
    if not task or not sep or not value:
        raise ConfigError(f"{where}: expected TASK:{KINDS[kind].upper()}[,key=value...], e.g. --{kind} mnist:0.02")
    kwargs: dict[str, Any] = {"task": task.strip(), KINDS[kind]: _scalar(value)}
    for part in rest:
        key, eq, val = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{where}: {part!r} is not key=value")
        if key.strip() in kwargs:
            raise ConfigError(f"{where}: {key.strip()!r} given twice")
        kwargs[key.strip()] = _scalar(val)
    return Declaration(kind, kwargs, where)


def _toml() -> Any:
    """``tomllib`` (Python 3.11+) or its backport ``tomli`` (a dependency on 3.10); same API."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_pyproject(path: Path) -> list[Declaration]:
    """Declarations from ``[tool.pytest_forgetting]`` of a pyproject.toml (none when the table is absent)."""
    if not path.is_file():
        return []
    toml = _toml()
    try:
        with path.open("rb") as fh:
            data = toml.load(fh)
    except (toml.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read TOML: {exc}") from None
    table = data.get("tool", {}).get("pytest_forgetting")
    if table is None:
        return []
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{TABLE}] must be a table")
    out: list[Declaration] = []
    for key, value in table.items():
        where = f"{path.name} [{TABLE}] {key}"
        if key == "tasks":  # [tool.pytest_forgetting.tasks.NAME]: data tasks, read by tasks.declared
            continue
        if key not in KINDS:
            from ._util import suggest

            raise ConfigError(
                f"{where}: unknown key {key!r}{suggest(key, list(KINDS))}; "
                "expected retains = [...] and/or improves = [...]"
            )
        entries = [value] if isinstance(value, dict) else value
        if not isinstance(entries, list):
            raise ConfigError(
                f'{where}: expected a list of inline tables, e.g. {key} = [{{ task = "mnist", {KINDS[key]} = 0.02 }}]'
            )
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(
                    f'{where}[{i}]: expected an inline table like {{ task = "mnist", {KINDS[key]} = 0.02 }}, '
                    f"got {entry!r}"
                )
            out.append(Declaration(key, dict(entry), f"{where}[{i}]"))
    return out


def check_duplicates(checks: list[tuple[Any, str]]) -> None:
    """Two declarations of the same check would be two identical test ids: an error, not a silent merge."""
    seen: dict[Any, str] = {}
    for check, where in checks:
        if check in seen:
            raise ConfigError(f"{where}: the same check is already declared at {seen[check]}")
        seen[check] = where
