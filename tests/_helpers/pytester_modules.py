"""The pytester patch that keeps heavy libraries imported across in-process runs (torch-free itself)."""

from __future__ import annotations

import sys

_HEAVY = (
    "torch",
    "transformers",
    "safetensors",
    "peft",
    "accelerate",
    "datasets",
    "sklearn",
    "scipy",
    "numpy",
    "pandas",
    "pyarrow",
    "tokenizers",
    "huggingface_hub",
    "matplotlib",
    "PIL",
    "pytest_forgetting",
    "filelock",
    "sympy",
)


def keep_heavy_modules() -> None:
    """Keep heavy libraries imported by inner pytester runs (torch registers C++ state once per process)."""
    from _pytest import pytester as _pt

    original = _pt.SysModulesSnapshot.__init__
    if getattr(original, "_forgetting_patched", False):
        return

    def __init__(self, preserve=None):  # type: ignore[no-untyped-def]
        def keep(name: str) -> bool:
            if name.split(".")[0] in _HEAVY or (preserve and preserve(name)):
                return True
            # installed libraries (hypothesis, pluggy plugins...) stay; the inner runs' own modules go
            path = getattr(sys.modules.get(name), "__file__", None) or ""
            return "site-packages" in path or "/lib/python3" in path

        original(self, preserve=keep)

    __init__._forgetting_patched = True  # type: ignore[attr-defined]
    _pt.SysModulesSnapshot.__init__ = __init__  # type: ignore[method-assign]
