"""``--model-factory``: the project's own code that builds the module bare weights are loaded into."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util import close_matches
from ..errors import CheckpointError
from .util import _describe_exc

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


_FACTORY_SPEC = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def resolve_factory(spec: str, rootdir: str | os.PathLike[str] | None = None) -> Callable[[], torch.nn.Module]:
    """Turn ``"package.module:callable"`` into a callable that builds an ``nn.Module``.

    ``rootdir`` is put on ``sys.path`` first so a project's own modules import. The returned
    callable raises :class:`CheckpointError` when the factory fails or returns something
    other than an ``nn.Module``.
    """
    match = _FACTORY_SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise CheckpointError(
            f"--model-factory {spec!r} is not of the form 'package.module:callable' (e.g. 'models.cnn:build')"
        )
    module_name, attr_path = match.groups()
    if rootdir is not None:
        root = str(Path(rootdir).resolve())
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            where = f" (rootdir {rootdir} is on sys.path)" if rootdir is not None else ""
            raise CheckpointError(
                f"--model-factory {spec!r}: no module named {exc.name!r}{where}; check the spelling or install it"
            ) from None
        raise CheckpointError(
            f"--model-factory {spec!r}: importing {module_name!r} failed: {_describe_exc(exc)}"
        ) from exc
    except (Exception, SystemExit) as exc:
        raise CheckpointError(
            f"--model-factory {spec!r}: importing {module_name!r} failed: {_describe_exc(exc)}"
        ) from exc
    obj: Any = module
    walked = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            close = close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CheckpointError(f"--model-factory {spec!r}: {walked!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    if not callable(obj):
        raise CheckpointError(f"--model-factory {spec!r}: {walked} is a {type(obj).__name__}, not a callable")
    return Factory(spec, obj)


class Factory:
    """A resolved --model-factory: calls it and checks it built an nn.Module."""

    def __init__(self, spec: str, fn: Callable[[], Any]) -> None:
        self.spec, self.fn = spec, fn

    def __call__(self) -> torch.nn.Module:
        import torch

        try:
            model = self.fn()
        except Exception as exc:
            raise CheckpointError(f"--model-factory {self.spec} raised {_describe_exc(exc)}") from exc
        if not isinstance(model, torch.nn.Module):
            raise CheckpointError(
                f"--model-factory {self.spec} returned a {type(model).__name__}, not a torch.nn.Module"
            )
        return model

    def __repr__(self) -> str:
        return self.spec


def _as_factory(factory: str | Callable[[], Any] | None, rootdir: Any) -> Factory | None:
    if factory is None or isinstance(factory, Factory):
        return factory
    if isinstance(factory, str):
        return resolve_factory(factory, rootdir)  # type: ignore[return-value]
    if callable(factory):
        return Factory(getattr(factory, "__qualname__", repr(factory)), factory)
    raise CheckpointError(f"model_factory must be 'module:callable' or a callable, not {type(factory).__name__}")


def _as_module(ref: Any) -> torch.nn.Module:
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is None or not isinstance(ref, torch.nn.Module):
        raise CheckpointError(
            f"a checkpoint reference is a path, a hub id (org/name) or an nn.Module, not a {type(ref).__name__}"
        )
    return ref
