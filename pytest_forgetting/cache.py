"""On-disk cache of base-model evaluations (and of tokenised task inputs).

An entry is the per-example outputs of one evaluation (``.npz``, loaded with
``allow_pickle=False``), keyed by everything that can change them: the base checkpoint's
content fingerprint, the task's data fingerprint and version, split, the subsample, device,
dtype, batch size, torch version and the plugin's evaluation version. Writes go to a temp
file and ``os.replace`` into place, so an interrupted run leaves no partial entry; a file lock
per key makes concurrent pytest-xdist workers compute an entry once.

The same directory keeps tokenised inputs (``prepared-<key>.npz``): a nested mapping of
tensors / arrays, keyed by the task's data fingerprint and the tokenizer's full serialisation, so
a warm run does not tokenise again; and ``file-digests.json``, the per-file checkpoint hashes of
:class:`pytest_forgetting.checkpoints.FileDigests`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .tasks.base import EvalResult

#: bump when the evaluation loop changes what it stores
EVAL_VERSION = "1"


def cache_key(**parts: Any) -> str:
    payload = json.dumps({"eval_version": EVAL_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class EvalCache:
    def __init__(self, directory: str | Path, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def _read(self, name: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        try:
            with np.load(self.directory / f"{name}.npz", allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except FileNotFoundError:
            return None
        except Exception:  # a corrupt entry (disk full, foreign file) is a miss, recomputed and replaced
            return None

    def _write(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, self.directory / f"{name}.npz")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self, key: str) -> EvalResult | None:
        data = self._read(key)
        if data is None or "__ids__" not in data:
            return None
        outputs = {k: v for k, v in data.items() if not k.startswith("__")}
        seconds = float(data["__seconds__"]) if "__seconds__" in data else 0.0
        return EvalResult(ids=data["__ids__"], outputs=outputs, seconds=seconds)

    def store(self, key: str, result: EvalResult) -> None:
        self._write(key, {"__ids__": result.ids, "__seconds__": np.float64(result.seconds), **result.outputs})

    def load_prepared(self, key: str) -> Any:
        """Tokenised inputs stored by :meth:`store_prepared`, or None (also for a damaged entry)."""
        data = self._read(f"prepared-{key}")
        if data is None:
            return None
        try:
            return _unflatten(data)
        except Exception:
            return None

    def store_prepared(self, key: str, prepared: Any) -> bool:
        """Store a nested mapping of tensors / arrays; anything else is not stored (returns False)."""
        arrays = _flatten(prepared)
        if arrays is None:
            return False
        self._write(f"prepared-{key}", arrays)
        return True

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (no-op when the cache is off)."""
        if not self.enabled:
            yield
            return
        from filelock import FileLock

        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.directory / f".{key}.lock")):
            yield


def _flatten(tree: Any) -> dict[str, np.ndarray] | None:
    """{"__layout__": JSON of [path, kind] per leaf, "a0": ..., "a1": ...}; None if a leaf is not an array."""
    layout: list[list[Any]] = []
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any, path: list[str]) -> bool:
        if isinstance(node, Mapping):
            if not all(isinstance(k, str) for k in node):
                return False
            return all(walk(v, [*path, k]) for k, v in node.items())
        if isinstance(node, np.ndarray) and node.dtype.kind not in "OV":
            kind, arr = "numpy", node
        elif type(node).__module__.startswith("torch") and hasattr(node, "detach"):
            kind, arr = "torch", node.detach().cpu().numpy()
        else:
            return False
        arrays[f"a{len(layout)}"] = arr
        layout.append([path, kind])
        return True

    if not isinstance(tree, Mapping) or not walk(tree, []):
        return None
    arrays["__layout__"] = np.array(json.dumps(layout))
    return arrays


def _unflatten(data: dict[str, np.ndarray]) -> dict[str, Any]:
    layout = json.loads(str(data["__layout__"]))
    tree: dict[str, Any] = {}
    for i, (path, kind) in enumerate(layout):
        arr = data[f"a{i}"]
        if kind == "torch":
            import torch

            arr = torch.from_numpy(np.ascontiguousarray(arr))
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = arr
    return tree
