"""Guard against pytest choosing its rootdir from a value of one of our options.

pytest picks its rootdir and ini file before plugins add their options, so in
``pytest --base-ckpt /data/base.safetensors`` it takes ``/data/base.safetensors`` for a test
path: the rootdir moves to a common ancestor of /data and the project, ``pyproject.toml`` is
never read, and the run quietly loses its configuration (pytest-dev/pytest#8846, #1435, #906).
Written ``--base-ckpt=/data/base.safetensors`` nothing goes wrong. We cannot undo pytest's
choice, so we detect that the space form changed it and stop with a usage error showing the
``=`` form.
"""

from __future__ import annotations

import inspect
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .options import OPTIONS

_VALUE_OPTIONS = frozenset(o.cli for o in OPTIONS if o.kind != "bool")


def space_form_values(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(option, value)`` for every option of ours written ``--opt VALUE`` (not ``--opt=VALUE``)."""
    out = []
    for i, arg in enumerate(args[:-1]):
        value = args[i + 1]
        if arg in _VALUE_OPTIONS and not value.startswith("-"):
            out.append((arg, value))
    return out


def _exists(value: str, invocation_dir: Path) -> bool:
    path = Path(value.split("::")[0]).expanduser()
    try:
        return (path if path.is_absolute() else invocation_dir / path).exists()
    except OSError:
        return False


def _setup(config: Any, args: list[str]) -> tuple[Path, Path | None] | None:
    """The (rootdir, inifile) pytest derives from ``args``; None when this pytest's helper cannot be called."""
    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:  # pragma: no cover - a pytest without it
        return None
    ns = config.known_args_namespace
    candidates: dict[str, Any] = {
        "inifile": getattr(ns, "inifilename", None),
        "override_ini": getattr(ns, "override_ini", None),
        "args": args,
        "rootdir_cmd_arg": getattr(ns, "rootdir", None) or None,
        "invocation_dir": Path(config.invocation_params.dir),
        "config": None,
    }
    try:
        params = inspect.signature(determine_setup).parameters
        result = determine_setup(**{k: v for k, v in candidates.items() if k in params})
    except Exception:  # noqa: BLE001 - pytest will report its own problems itself
        return None
    return Path(result[0]), (Path(result[1]) if result[1] else None)


def rootdir_mixup(config: Any) -> str | None:
    """The usage-error text when a space-form value of ours moved pytest's rootdir or ini file, else None."""
    raw = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *map(str, config.invocation_params.args)]
    invocation_dir = Path(config.invocation_params.dir)
    spaced = [(opt, val) for opt, val in space_form_values(raw) if _exists(val, invocation_dir)]
    if not spaced:
        return None  # the usual case: nothing to check, nothing imported
    actual = (Path(config.rootpath), Path(config.inipath) if config.inipath else None)
    positional = [str(a) for a in getattr(config.known_args_namespace, "file_or_dir", None) or []]
    intended = _setup(config, positional)
    seen_by_pytest = _setup(config, [*positional, *(val for _, val in spaced)])
    if intended is None or seen_by_pytest is None:
        # cannot replay pytest's choice: err on the side of the safe spelling for values outside the project
        outside = [(o, v) for o, v in spaced if not _inside(v, invocation_dir)]
        if not outside:
            return None
        spaced, intended = outside, None
    elif seen_by_pytest != actual or intended == actual:
        return None  # the value did not decide anything (or pytest chose for another reason)
    forms = ", ".join(f"{opt}={val}" for opt, val in spaced)
    written = ", ".join(f"{opt} {val}" for opt, val in spaced)
    chosen = f"rootdir {actual[0]} and {'ini file ' + str(actual[1]) if actual[1] else 'no ini file'}"
    wanted = ""
    if intended is not None:
        wanted = f" instead of rootdir {intended[0]}" + (f" and {intended[1]}" if intended[1] else "")
    return (
        f"{written} was written with a space: pytest reads its ini file before plugins add their options, "
        f"so it took the value for a test path and chose {chosen}{wanted} (your pyproject.toml / pytest.ini "
        f"settings would be ignored). Write it with '=': {forms}"
    )


def _inside(value: str, invocation_dir: Path) -> bool:
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else invocation_dir / path).resolve()
    return path == invocation_dir.resolve() or invocation_dir.resolve() in path.parents
