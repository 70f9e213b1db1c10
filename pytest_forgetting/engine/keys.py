"""Where every cache key is built: the one module that says what decides a cached result.

Three keys, each a frozen record whose :meth:`to_dict` is exactly the mapping the cache records in
an entry and hashes into its file name (``cache.key_json``: sorted JSON, so the field order below is
the order of the mapping, not of the bytes):

* :class:`BaseEvalKey`: a base model's outputs on (task, split, indices) -> ``<hash>.npz``;
* :class:`TunedEvalKey`: a tuned model's, the same parts plus the fingerprint of the base it is
  paired with -> ``tuned-<hash>.npz``;
* :class:`PreparedKey`: a task's tokenised inputs for one tokenizer -> ``prepared-<hash>.npz``.

Two parts of them are computed here too: :func:`library_versions` (libraries whose version can
change outputs or tokenised inputs) and :func:`model_code` (what of a model's *code* a key covers;
its weights are in its fingerprint). A field added to a key changes every entry's name: bump nothing,
old entries are simply missed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..tasks.base import Task, hash_arrays

#: libraries whose version can change a base model's outputs (or its tokenised inputs)
_KEY_LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate", "gguf", "numpy")
#: {library: version}, filled once per process by :func:`library_versions` (tests replace it)
_LIBRARY_VERSIONS: dict[str, str] = {}
_MAX_SOURCE_BYTES = 64 * 2**20


def task_class(task: Task) -> str:
    """The qualified name of a task's class, as every key records it."""
    return f"{type(task).__module__}.{type(task).__qualname__}"


@dataclass(frozen=True)
class EvalParts:
    """Everything but the model's identity that decides a model's outputs on (task, split, indices)."""

    model_code: dict[str, Any]
    trust_remote_code: bool
    task: str
    task_class: str
    task_version: Any
    data: Any
    split: str
    indices: str
    n: int
    device: str
    dtype: Any
    batch_size: int
    device_map: Any
    max_memory: Any
    libraries: dict[str, str]
    plugin: str

    @classmethod
    def of(
        cls, ref: Any, task: Task, split: str, idx: np.ndarray, *, settings: Any, device: str, batch_size: int
    ) -> EvalParts:
        """The parts for a model given as ``ref`` (a reference or a module) under the session's settings."""
        from .. import (
            __version__,  # read at each call: a test may stand in another plugin version
        )

        s = settings
        return cls(
            model_code=model_code(ref, s.model_factory, s.rootdir), trust_remote_code=s.trust_remote_code,
            task=task.name, task_class=task_class(task), task_version=task.version, data=task.data_fingerprint(split),
            split=split, indices=hash_arrays(idx), n=len(idx), device=device, dtype=s.dtype, batch_size=batch_size,
            device_map=s.device_map, max_memory=s.max_memory, libraries=library_versions(), plugin=__version__,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BaseEvalKey:
    """The key of a base model's evaluation: its fingerprint and the :class:`EvalParts`.

    ``tokenizer`` ((fingerprint, cache id) of its tokenizer) is set for an in-memory module only:
    its fingerprint covers the weights, not the tokenizer it carries.
    """

    fingerprint: str
    parts: EvalParts
    tokenizer: tuple[Any, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        key = {"kind": "eval", "base": self.fingerprint, **self.parts.to_dict()}
        if self.tokenizer is not None:
            key["tokenizer"] = list(self.tokenizer)
        return key


@dataclass(frozen=True)
class TunedEvalKey:
    """The key of a tuned model's evaluation: the base key's parts with the tuned fingerprint, plus
    the fingerprint of the base it is paired with (an adapter is evaluated on that base; a module
    without a tokenizer borrows the base's). ``paired_base`` is None when the session has no base."""

    fingerprint: str
    parts: EvalParts
    paired_base: str | None
    tokenizer: tuple[Any, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        key = {"kind": "eval-tuned", **self.parts.to_dict(), "tuned": self.fingerprint, "paired_base": self.paired_base}
        if self.tokenizer is not None:
            key["tokenizer"] = list(self.tokenizer)
        return key


@dataclass(frozen=True)
class PreparedKey:
    """The key of a task's prepared (tokenised) inputs: the task, its data, how it prepares for this
    tokenizer (``Task.prepare_key``), the tokenizer's behaviour (``tokenizer_cache_id``) and the libraries."""

    task_class: str
    task: str
    task_version: Any
    data: Any
    split: str
    prepare: Any
    tokenizer: str
    libraries: dict[str, str]

    @classmethod
    def of(cls, task: Task, split: str, meta: Any) -> PreparedKey:
        return cls(
            task_class=task_class(task), task=task.name, task_version=task.version, data=task.data_fingerprint(split),
            split=split, prepare=task.prepare_key(meta), tokenizer=meta.tokenizer_cache_id,
            libraries=library_versions(),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "prepared", **{f.name: getattr(self, f.name) for f in fields(self)}}


def library_versions() -> dict[str, str]:
    """{library: version or "absent"}, looked up once per process."""
    if not _LIBRARY_VERSIONS:
        import sys
        from importlib.metadata import PackageNotFoundError, version

        for name in _KEY_LIBRARIES:
            found = getattr(sys.modules.get(name), "__version__", None)
            if not isinstance(found, str):
                try:
                    found = version(name)
                except PackageNotFoundError:
                    found = "absent"
            _LIBRARY_VERSIONS[name] = found
    return dict(_LIBRARY_VERSIONS)


def model_code(ref: Any, factory: str | None, rootdir: str | None) -> dict[str, Any]:
    """What of the model's *code* the cache key must cover (weights are in the fingerprint).

    ``--model-factory module:fn``: the spec and a hash of the module's source file (read from disk,
    not imported: a warm run never runs it); an in-memory module: its class's source file. Modules
    that the factory module imports in turn are not covered (README "Cache").
    """
    out: dict[str, Any] = {}
    if factory:
        module_name = factory.split(":", 1)[0].strip()
        out["factory"] = factory
        out["factory_source"] = module_source_hash(module_name, rootdir)
    if ref is not None and not isinstance(ref, str):
        cls = type(ref)
        out["module_class"] = f"{cls.__module__}.{cls.__qualname__}"
        out["module_source"] = module_source_hash(cls.__module__, None)
    return out


def module_source_hash(module_name: str, rootdir: str | None) -> str:
    """sha256 of a module's file as it is on disk now ("unresolved" when it cannot be found or read)."""
    import hashlib
    import importlib.util
    import sys
    from pathlib import Path

    origin = getattr(sys.modules.get(module_name), "__file__", None)
    if origin is None:
        if rootdir is not None:  # where resolve_factory will import it from
            root = str(Path(rootdir).resolve())
            if root not in sys.path:
                sys.path.insert(0, root)
        try:
            spec = importlib.util.find_spec(module_name)
        except (Exception, SystemExit):  # noqa: BLE001 - a parent package that fails to import
            spec = None
        origin = spec.origin if spec is not None and spec.has_location else None
    if not origin:
        return "unresolved"
    try:
        with open(origin, "rb") as fh:
            data = fh.read(_MAX_SOURCE_BYTES + 1)
    except OSError:
        return "unresolved"
    return "sha256:" + hashlib.sha256(data).hexdigest()
