"""A PEFT adapter: checked on the meta device, then merged into a copy of the base model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..compat import _label_map_from_dict
from ..headers import _read_safetensors_header
from ..records import LoadedCheckpoint, Target
from ..safety import _read_config, _read_json
from ..util import _describe_exc, _few
from .common import _key_problems, _load_tokenizer, _torch_load_weights_only
from .protocol import Built, LoadContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _load_adapter(
    target: Target, base: LoadedCheckpoint | None, trust_remote_code: bool
) -> tuple[torch.nn.Module, Any, Any, dict[int, str] | None]:
    """Base + PEFT adapter, merged into a copy of the base (the base itself is never touched)."""
    folder = target.path
    if base is None:
        raise CheckpointError(f"{folder} is a PEFT adapter; a PEFT adapter needs a base checkpoint (--base-ckpt)")
    if not isinstance(base, LoadedCheckpoint):
        raise CheckpointError(f"base must be a LoadedCheckpoint, got {type(base).__name__}")
    adapter_config = _read_json(folder / "adapter_config.json")
    if not isinstance(adapter_config, dict) or not isinstance(adapter_config.get("peft_type"), str):
        raise CheckpointError(f"{folder / 'adapter_config.json'} is not a PEFT adapter config (no 'peft_type')")
    if target.weights == "safetensors":
        header = _read_safetensors_header(folder / "adapter_model.safetensors")
        file_shapes = {k: shape for k, (_dtype, shape) in header.items()}
    else:  # validate it the safe way first; peft then reads it with weights_only=True as well
        file_shapes = {k: tuple(v.shape) for k, v in _torch_load_weights_only(folder / "adapter_model.bin").items()}
    file_keys = set(file_shapes)
    if adapter_config.get("megatron_config") and not trust_remote_code:  # peft imports the module it names
        raise CheckpointError(
            f"{folder / 'adapter_config.json'} sets megatron_config, which makes peft import the module named by "
            "megatron_core; pass --forgetting-trust-remote-code only if you trust its author"
        )
    try:
        import peft
        import torch
        from peft.utils import get_peft_model_state_dict
    except ImportError as exc:
        raise CheckpointError(
            f"{folder} is a PEFT adapter; loading it needs the peft package: pip install peft"
        ) from exc
    _dry_run_adapter(folder, base.model, file_shapes)

    model_copy = copy.deepcopy(base.model).to("cpu", dtype=torch.get_default_dtype())
    try:
        peft_model = peft.PeftModel.from_pretrained(model_copy, str(folder), is_trainable=False, torch_device="cpu")
        expected_keys = set(get_peft_model_state_dict(peft_model).keys())
    except Exception as exc:
        raise CheckpointError(f"PEFT adapter {folder} does not apply to the base model: {_describe_exc(exc)}") from exc
    missing, unexpected = sorted(expected_keys - file_keys), sorted(file_keys - expected_keys)
    if missing or unexpected:
        parts = [f"{len(missing)} missing ({_few(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_few(unexpected)})"] if unexpected else []
        raise CheckpointError(
            f"PEFT adapter {folder} does not fit the base model: " + "; ".join(parts) + " — was it trained on "
            "a different base?"
        )
    try:
        merged = peft_model.merge_and_unload()
    except Exception as exc:
        raise CheckpointError(f"merging PEFT adapter {folder} into the base failed: {_describe_exc(exc)}") from exc

    tokenizer = _load_tokenizer(folder, trust_remote_code) or base.tokenizer
    config = getattr(merged, "config", None) or base.config
    label_map = base.label_map
    if (folder / "config.json").is_file():
        own = _read_config(folder).get("id2label")
        if isinstance(own, dict):
            label_map = _label_map_from_dict(own) or label_map
    return merged, tokenizer, config, label_map


def _dry_run_adapter(folder: Path, base_model: torch.nn.Module, file_shapes: dict[str, tuple[int, ...]]) -> None:
    """Apply the adapter config to a meta-device copy of the base and compare with the file's tensors.

    peft allocates what ``adapter_config.json`` asks for (``r``, target modules, modules to save)
    before it reads a weight, so a config with ``r = 2000000`` would exhaust memory first. On the
    meta device nothing is allocated; every tensor the config implies must be in the file with the
    same shape (and the file must hold nothing else), or the adapter is refused before the real load.
    """
    import peft
    import torch
    from peft.utils import get_peft_model_state_dict

    config_path = folder / "adapter_config.json"
    try:
        config = peft.PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointError(f"{config_path} is not a valid PEFT config: {_describe_exc(exc)}") from exc
    if hasattr(config, "init_lora_weights"):  # data-dependent inits (PiSSA, LoftQ, EVA) are overwritten anyway
        config.init_lora_weights = False
    # AdaLoRA: peft's resizing to the saved rank pattern cannot run on the meta device; the full
    # init_r shapes are built and then cut to each module's kept ranks (_adalora_shapes)
    rank_pattern = (
        getattr(config, "rank_pattern", None) if str(getattr(config, "peft_type", "")).endswith("ADALORA") else None
    )
    if rank_pattern:
        config.rank_pattern = None
    try:
        with torch.device("meta"):
            dry = peft.get_peft_model(_meta_copy(base_model), config)
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(dry).items()}
        if rank_pattern:
            expected = _adalora_shapes(expected, rank_pattern)
    except Exception as exc:
        raise CheckpointError(f"PEFT adapter {folder} does not apply to the base model: {_describe_exc(exc)}") from exc
    missing = sorted(expected.keys() - file_shapes.keys())
    unexpected = sorted(file_shapes.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & file_shapes.keys() if expected[k] != tuple(file_shapes[k]))
    if missing or unexpected or mismatched:
        shown = [
            f"{k.removeprefix('base_model.model.')}: file {tuple(file_shapes[k])} vs config {expected[k]}"
            for k in mismatched
        ]
        raise CheckpointError(
            f"PEFT adapter {folder} does not fit the base model: "
            + "; ".join(_key_problems(missing, unexpected, shown))
            + " — was it trained on a different base, or is adapter_config.json (r, target_modules) not the one "
            "saved with these weights?"
        )


def _adalora_shapes(expected: dict[str, tuple[int, ...]], rank_pattern: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Adapter tensor shapes at AdaLoRA's kept ranks: ``lora_A`` (r, in), ``lora_B`` (out, r), ``lora_E`` (r, 1)."""
    kept = {}
    for key, mask in rank_pattern.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_E", 1)[0]
        kept[module] = int(sum(bool(m) for m in mask)) if isinstance(mask, (list, tuple)) else int(mask)
    out = {}
    for key, shape in expected.items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".")
        r = kept.get(module)
        if r is not None and part in ("lora_A", "lora_E"):
            shape = (r, *shape[1:])
        elif r is not None and part == "lora_B":
            shape = (*shape[:-1], r)
        out[key] = shape
    return out


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (nothing allocated)."""
    import torch

    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in memo:
            meta = tensor.detach().to("meta")
            memo[id(tensor)] = (
                torch.nn.Parameter(meta, requires_grad=tensor.requires_grad)
                if isinstance(tensor, torch.nn.Parameter)
                else meta
            )
    return copy.deepcopy(model, memo)


class PeftLoader:
    """A PEFT adapter folder (adapter_config.json + adapter weights), merged into a copy of ``ctx.base``."""

    name = "peft"

    def places(self, target: Target) -> bool:
        return False

    def refuse(self, target: Target, ctx: LoadContext) -> None:
        pass

    def load(self, target: Target, ctx: LoadContext) -> Built:
        return _load_adapter(target, ctx.base, ctx.trust_remote_code)
