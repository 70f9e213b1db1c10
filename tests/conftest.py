"""Shared helpers of the test suite: tiny models and projects built in tmp_path, nothing downloaded."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

# pytester's in-process runs restore sys.modules afterwards; torch cannot be imported twice in
# one process, so the heavy libraries are imported once here, before any inner run.
import numpy  # noqa: F401,E402
import safetensors.torch  # noqa: F401,E402
import scipy.stats  # noqa: F401,E402
import torch  # noqa: F401,E402

# the same holds for the plugin's own modules: classes must stay identical across inner runs
import pytest_forgetting.api  # noqa: F401,E402
import pytest_forgetting.checkpoints  # noqa: F401,E402
import pytest_forgetting.session  # noqa: F401,E402
import pytest_forgetting.tasks  # noqa: F401,E402

pytest_plugins = ["pytester"]

# The plugin's default cache folder is the user cache folder ($XDG_CACHE_HOME/pytest-forgetting):
# the suite, and every inner run it starts, must never write to the real one.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="forgetting-tests-xdg-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's inner runs get their own default cache folder (no cached base leaks between tests)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("FORGETTING_CACHE_DIR", raising=False)

# Property tests explore a fixed, seeded sequence of examples: CI must not turn red by chance.
# (Run with HYPOTHESIS_PROFILE=explore to search with fresh randomness.)
import hypothesis  # noqa: E402

hypothesis.settings.register_profile("forgetting-ci", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "forgetting-ci"))

_HEAVY = ("torch", "transformers", "safetensors", "peft", "accelerate", "datasets", "sklearn", "scipy", "numpy",
          "pandas", "pyarrow", "tokenizers", "huggingface_hub", "matplotlib", "PIL", "pytest_forgetting", "filelock", "sympy")


def _keep_heavy_modules() -> None:
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


_keep_heavy_modules()

K = 4  # classes of the synthetic task

TINY_MODELS = '''
import torch
from torch import nn

K = %d


def build():
    """One linear layer over K+1 features: K one-hot class features and a 'trap' flag."""
    return nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
''' % K

CONFTEST = '''
import numpy as np
import pytest_forgetting as pf

K = %d


def _data(n, trap, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) %% K
    x = np.zeros((n, 1, 1, K + 1), dtype=np.float32)
    x[np.arange(n), 0, 0, labels] = 1.0
    # 'trap' examples: class 0 with the flag set; a tuned model that maps the flag to class 1 gets them wrong
    trap_idx = np.flatnonzero(labels == 0)[:trap]
    x[trap_idx, 0, 0, K] = 1.0
    return x, labels


@pf.task("synth")
def synth():
    x, y = _data(%d, %d, 0)
    return pf.ImageClassificationTask(x, y, ids=[f"ex{i}" for i in range(len(y))])


@pf.task("synth-small")
def synth_small():
    x, y = _data(40, 0, 1)
    return pf.ImageClassificationTask(x, y)
'''


def linear_weights(trap_weight: float = 0.0, scale: float = 5.0, swap: bool = False):
    import torch

    w = torch.zeros(K, K + 1)
    w[:, :K] = torch.eye(K) * scale
    if swap:  # classes 0 and 1 swapped: a massive regression
        w[[0, 1], :K] = w[[1, 0], :K]
    w[1, K] = trap_weight  # flag pushes to class 1
    return {"1.weight": w, "1.bias": torch.zeros(K)}


def save_weights(path: Path, state: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


class Project:
    """A tiny model repo inside pytester: conftest with tasks, a model factory, checkpoints."""

    def __init__(self, pytester: pytest.Pytester, n: int = 400, trap: int = 0) -> None:
        self.pytester = pytester
        self.path = pytester.path
        pytester.makepyfile(tinymodels=TINY_MODELS)
        pytester.makeconftest(CONFTEST % (K, n, trap))
        self.base = save_weights(self.path / "base.safetensors", linear_weights())

    def tuned(self, name: str = "tuned", **kw) -> Path:
        return save_weights(self.path / f"{name}.safetensors", linear_weights(**kw))

    def args(self, tuned: Path | None = None, *extra: str) -> list[str]:
        out = ["--base-ckpt", str(self.base), "--model-factory", "tinymodels:build", "--forgetting-cache-dir", str(self.path / "cache")]
        if tuned is not None:
            out += ["--tuned-ckpt", str(tuned)]
        return out + list(extra)

    def test_file(self, body: str, name: str = "test_contract") -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(body)})


@pytest.fixture
def make_project(pytester: pytest.Pytester):
    def make(**kw) -> Project:
        return Project(pytester, **kw)

    return make
