"""Task building blocks (imported lazily by ``pytest_forgetting``).

The names below load on first use (PEP 562): the plugin imports ``tasks.declared`` in every run,
and that must not import numpy or the task classes.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalResult": "base",
    "ModelMeta": "base",
    "Task": "base",
    "ImageClassificationTask": "classification",
    "TextClassificationTask": "classification",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_forgetting.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
