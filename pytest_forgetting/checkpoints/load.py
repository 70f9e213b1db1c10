"""Loading a checkpoint reference: find it, refuse what is unsafe, stage private copies, build the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .compat import _label_map, _label_map_from_dict
from .factory import _as_factory, _as_module
from .fingerprint import FileDigests, _fingerprint_module
from .headers import _check_weight_headers
from .loaders import LoadContext, loader_for
from .loaders.common import _load_tokenizer
from .loaders.hf import DEVICE_MAP_NEEDS_HF_FOLDER
from .records import PICKLE_SUFFIXES, LoadedCheckpoint, Placement, Ref, Target
from .refs import _describe, _describe_folder, _locate
from .safety import _read_config, _refuse_remote_code
from .staging import Stage
from .util import _describe_exc, _show

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def load_checkpoint(
    ref: Ref,
    *,
    role: str = "tuned",
    model_factory: str | Callable[[], torch.nn.Module] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    allow_download: bool = False,
    rootdir: str | os.PathLike[str] | None = None,
    base: LoadedCheckpoint | None = None,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    digests: FileDigests | None = None,
) -> LoadedCheckpoint:
    """Load ``ref`` (a path, a hub id or an ``nn.Module``) under the package's safety rules.

    ``role`` ("base" / "tuned") only labels error messages. ``model_factory`` is a callable
    or a ``"module:callable"`` spec, needed for bare ``.safetensors`` and pickle files.
    ``base`` is the loaded base checkpoint, needed when ``ref`` is a PEFT adapter.

    ``device_map`` (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a
    ``{module: device}`` dict, devices being ``"cpu"``, ``"disk"``, GPU indices or ``"cuda:N"``)
    loads a Hugging Face folder (or hub id) with safetensors weights through accelerate, split
    over devices and offloaded to ``offload_folder`` (a fresh temporary folder when None);
    ``max_memory`` is accelerate's per-device budget. Such a model is loaded directly in
    ``dtype`` (the default dtype when None) and stays where accelerate put it: it is *not* on
    the CPU and cannot be moved (its ``hf_device_map`` says where each module lives when it
    was split). Other checkpoint kinds are refused with a device map. ``digests`` is accepted
    for symmetry with :func:`fingerprint_ref` and not needed: the fingerprint of a loaded
    checkpoint is the hash of the very bytes copied for its loader.
    """
    try:
        ctx = LoadContext(
            rootdir=rootdir,
            allow_pickle=allow_pickle,
            allow_download=allow_download,
            trust_remote_code=trust_remote_code,
            base=base,
            placement=Placement(device_map, max_memory, offload_folder, dtype) if device_map is not None else None,
        )
        return _load(ref, model_factory, ctx)
    except CheckpointError as exc:
        raise CheckpointError(f"{role} checkpoint {_show(ref)}: {exc}") from exc.__cause__
    except Exception as exc:  # a loader's own exception type: never let it escape raw
        raise CheckpointError(f"{role} checkpoint {_show(ref)}: could not load: {_describe_exc(exc)}") from exc


def load_metadata(
    ref: Any, *, rootdir: str | os.PathLike[str] | None = None, trust_remote_code: bool = False
) -> LoadedCheckpoint:
    """Label map and tokenizer of a checkpoint folder without building its model.

    Lets ``check_compatible`` run when the base evaluation comes from the cache and the base
    model itself is never loaded. Files, hub ids and modules have no such metadata here.
    """
    located = _locate(ref, rootdir) if not hasattr(ref, "state_dict") else None
    empty = LoadedCheckpoint(model=None, ref=str(ref), resolved=str(located), kind="metadata", fingerprint="")  # type: ignore[arg-type]
    if not isinstance(located, Path) or not located.is_dir():
        return empty
    target = _describe_folder(located, allow_pickle=True)  # the same file checks as loading it
    aux = tuple(p for p in target.files if not p.name.lower().endswith((".safetensors", ".gguf", *PICKLE_SUFFIXES)))
    stage = Stage(Target(target.kind, located, str(located), target.weights, aux))
    try:
        labels = None
        if (stage.dir / "config.json").is_file():
            id2label = _read_config(stage.dir).get("id2label")
            labels = _label_map_from_dict(id2label) if isinstance(id2label, dict) else None
        empty.label_map = labels
        empty.tokenizer = _load_tokenizer(stage.dir, trust_remote_code)
    except CheckpointError as exc:
        raise stage.unstage(exc) from exc.__cause__
    finally:
        stage.remove()
    return empty


def _load(ref: Ref, model_factory: str | Callable[[], torch.nn.Module] | None, ctx: LoadContext) -> LoadedCheckpoint:
    """Find ``ref``, refuse what is unsafe on the user's files, stage private copies, let its loader build it."""
    if not isinstance(ref, (str, os.PathLike)):
        if ctx.placement is not None:
            raise CheckpointError(
                DEVICE_MAP_NEEDS_HF_FOLDER + "; dispatch an in-memory module yourself (accelerate.dispatch_model)"
            )
        module = _as_module(ref)
        module.eval()
        config = getattr(module, "config", None)
        name = f"<in-memory {type(module).__name__}>"
        from ..tasks.base import tokenizer_of

        return LoadedCheckpoint(
            model=module, ref=name, resolved=name, kind="module", fingerprint=_fingerprint_module(module),
            tokenizer=tokenizer_of(module), config=config, label_map=_label_map(config),
        )  # fmt: skip

    target = _describe(
        ref, ctx.rootdir, allow_pickle=ctx.allow_pickle, allow_download=ctx.allow_download,
        trust_remote_code=ctx.trust_remote_code,
    )  # fmt: skip
    ctx = replace(ctx, factory=_as_factory(model_factory, ctx.rootdir))
    loader = loader_for(target)
    if ctx.placement is not None and not loader.places(target):
        what = {"peft-adapter": "a PEFT adapter", "safetensors": "a bare .safetensors file", "gguf": "a GGUF file"}.get(
            target.kind, f"a {target.kind} checkpoint"
        )
        raise CheckpointError(f"{DEVICE_MAP_NEEDS_HF_FOLDER}, not {what}")
    if target.path.is_dir():
        _refuse_remote_code(target.path, ctx.trust_remote_code)
    loader.refuse(target, ctx)

    _check_weight_headers(target)  # before copying: a weights file must be what its header says, no bigger
    stage = Stage(target)  # validated private copies: all that the loader ever reads
    fingerprint = stage.fingerprint
    try:
        model, tokenizer, config, label_map = loader.load(stage.target, ctx)
    except CheckpointError as exc:
        stage.remove()
        raise stage.unstage(exc) from exc.__cause__
    except BaseException:
        stage.remove()
        raise
    if ctx.placement is not None:  # accelerate may read offloaded weights from the copies later
        stage.keep_while(model)
    else:
        stage.remove()
    named: tuple[Any, ...] = (config, getattr(model, "config", None))
    for obj in named:
        if obj is not None and hasattr(obj, "_name_or_path"):
            obj._name_or_path = target.resolved  # not the private copy's name
    if hasattr(model, "name_or_path"):
        model.name_or_path = target.resolved  # type: ignore[assignment]  # an HF model's str attribute
    if (
        tokenizer is not None
        and hasattr(tokenizer, "name_or_path")
        and tokenizer is not getattr(ctx.base, "tokenizer", None)
    ):
        tokenizer.name_or_path = target.resolved

    model.eval()
    from ..tasks.base import attach_tokenizer

    attach_tokenizer(model, tokenizer)  # in-memory uses of the module (fixtures, finetune) tokenise alike
    return LoadedCheckpoint(
        model=model, ref=_show(ref, quote=False), resolved=target.resolved, kind=target.kind,
        fingerprint=fingerprint, tokenizer=tokenizer, config=config, label_map=label_map,
    )  # fmt: skip


def nonfinite_params(model: torch.nn.Module, limit: int = 5) -> list[str]:
    """Names of the first ``limit`` parameters / buffers holding NaN or Inf (empty when clean).

    Non-finite weights are not a loading error: the evaluator decides what they mean.
    """
    import torch

    names: list[str] = []
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen or tensor.device.type == "meta":
            continue
        seen.add(id(tensor))
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            names.append(name)
            if len(names) >= limit:
                break
    return names
