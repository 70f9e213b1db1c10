"""On-disk cache of base-model evaluations.

An entry is the per-example outputs of one evaluation (``.npz``, loaded with
``allow_pickle=False``), keyed by everything that can change them: the base checkpoint's
content fingerprint, the task's data fingerprint and version, split, the subsample, device,
dtype, batch size, torch version and the plugin's evaluation version. Writes go to a temp
file and ``os.replace`` into place, so an interrupted run leaves no partial entry; a file lock
per key makes concurrent pytest-xdist workers compute an entry once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
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

    def load(self, key: str) -> EvalResult | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                ids = data["__ids__"]
                outputs = {k: data[k] for k in data.files if not k.startswith("__")}
                seconds = float(data["__seconds__"]) if "__seconds__" in data.files else 0.0
        except FileNotFoundError:
            return None
        except Exception:  # a corrupt entry (disk full, foreign file) is a miss, recomputed and replaced
            return None
        return EvalResult(ids=ids, outputs=outputs, seconds=seconds)

    def store(self, key: str, result: EvalResult) -> None:
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, __ids__=result.ids, __seconds__=np.float64(result.seconds), **result.outputs)
            os.replace(tmp, self._path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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
