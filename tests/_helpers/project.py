"""The tiny linear model project of the pytester tests: a conftest with tasks, a model factory, checkpoints.

Torch-free at import: torch and safetensors are imported only by the functions that build weights.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

K = 4  # classes of the synthetic task

TINY_MODELS = (
    '''
import torch
from torch import nn

K = %d


def build():
    """One linear layer over K+1 features: K one-hot class features and a 'trap' flag."""
    return nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))
'''
    % K
)

CONFTEST = """
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
"""


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
        out = [
            "--base-ckpt",
            str(self.base),
            "--model-factory",
            "tinymodels:build",
            "--forgetting-cache-dir",
            str(self.path / "cache"),
        ]
        if tuned is not None:
            out += ["--tuned-ckpt", str(tuned)]
        return out + list(extra)

    def test_file(self, body: str, name: str = "test_contract") -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(body)})
