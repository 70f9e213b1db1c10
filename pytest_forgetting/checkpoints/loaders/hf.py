"""A Hugging Face model folder (or hub snapshot): class from ``config.architectures``, strict loading."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..compat import _label_map
from ..headers import _check_safetensors_index, _read_safetensors_header
from ..records import Placement, Target
from ..safety import _attn_kwarg, _read_config, _refuse_oversized
from ..util import _describe_exc
from .common import _check_loading_info, _dtype_kwarg, _load_tokenizer, _torch_load_weights_only
from .protocol import Built, LoadContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _load_hf_folder(
    target: Target, trust_remote_code: bool, placement: Placement | None = None
) -> tuple[torch.nn.Module, Any]:
    """A transformers model folder: class from config.architectures, strict loading.

    With a ``placement`` accelerate loads it straight onto its devices (and the disk) in the
    evaluation dtype; otherwise it is returned on the CPU in the default dtype.
    """
    import torch
    import transformers

    folder = target.path
    config_dict = _read_config(folder)
    architectures = config_dict.get("architectures")
    if (
        not isinstance(architectures, list)
        or not architectures
        or not isinstance(architectures[0], str)
        or not architectures[0].isidentifier()
    ):
        raise CheckpointError(
            f"{folder / 'config.json'} has no usable 'architectures' list; add the model class, "
            'e.g. "architectures": ["BertForSequenceClassification"] (save_pretrained writes it)'
        )
    arch = architectures[0]
    weight_files = [p for p in target.files if p.name.lower().endswith((".safetensors", ".bin"))]
    if target.weights == "safetensors":
        _check_safetensors_index(folder)
        checkpoint_elements = sum(
            math.prod(shape) for p in weight_files for _dtype, shape in _read_safetensors_header(p).values()
        )
        state_dict = None
    else:
        state_dict = {}
        for p in weight_files:
            state_dict.update(_torch_load_weights_only(p))
        checkpoint_elements = sum(t.numel() for t in state_dict.values())

    try:
        config = transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(
            f"{folder / 'config.json'} is not a valid transformers config: {_describe_exc(exc)}"
        ) from exc
    model_cls = _model_class(transformers, arch, config_dict)
    _refuse_oversized(model_cls, config, checkpoint_elements, str(folder / "config.json"), trust_remote_code)

    kwargs: dict[str, Any] = {
        "config": config,
        "trust_remote_code": trust_remote_code,
        "local_files_only": True,
        "output_loading_info": True,
        # Report mismatched shapes in the loading info instead of a bare RuntimeError; any
        # mismatch is refused below, so nothing re-initialised is ever returned.
        "ignore_mismatched_sizes": True,
        _dtype_kwarg(transformers): torch.get_default_dtype(),
        **_attn_kwarg(config_dict, trust_remote_code),
    }
    if placement is not None:
        kwargs.update(_placement_kwargs(placement, folder))
    try:
        if state_dict is None:
            model, info = model_cls.from_pretrained(str(folder), use_safetensors=True, **kwargs)
        else:  # weights already read with torch.load(weights_only=True); transformers never unpickles
            model, info = model_cls.from_pretrained(None, state_dict=state_dict, **kwargs)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{model_cls.__name__}.from_pretrained({folder}) failed: {_describe_exc(exc)}") from exc
    _check_loading_info(info, folder, model_cls.__name__)
    if placement is not None:
        return model, model.config
    return model.to("cpu"), model.config


DEVICE_MAP_NEEDS_HF_FOLDER = (
    "--forgetting-device-map needs a Hugging Face model folder or hub id with safetensors weights "
    "(config.json + *.safetensors)"
)


def _placement_kwargs(placement: Placement, folder: Path) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory / offload_folder / dtype, checked against this machine."""
    import tempfile

    import torch

    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise CheckpointError("--forgetting-device-map needs the accelerate package: pip install accelerate") from None
    device_map = placement.device_map
    if isinstance(device_map, dict):
        n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for module, device in device_map.items():
            index = device if isinstance(device, int) else None
            if isinstance(device, str) and device.startswith("cuda"):
                index = int(device.split(":", 1)[1]) if ":" in device else 0
            if index is not None and index >= n_cuda:
                raise CheckpointError(
                    f"the device map puts {module!r} on {device!r} but this machine has {n_cuda} CUDA device(s)"
                )
    dtype = placement.dtype if placement.dtype is not None else torch.get_default_dtype()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    offload = placement.offload_folder
    if offload is None:
        offload = tempfile.mkdtemp(prefix="forgetting-offload-")
    import transformers

    return {
        "device_map": device_map,
        "max_memory": placement.max_memory,
        "offload_folder": str(offload),
        _dtype_kwarg(transformers): dtype,
    }


def _model_class(transformers: Any, arch: str, config_dict: dict[str, Any]) -> Any:
    """The class named in config.architectures; AutoModel when transformers has no such class."""
    from transformers import PreTrainedModel

    auto_map = config_dict.get("auto_map")
    if isinstance(auto_map, dict):  # remote code, already trusted: find the Auto class serving `arch`
        for auto_name, target in auto_map.items():
            if isinstance(target, str) and target.rsplit(".", 1)[-1] == arch and auto_name.startswith("AutoModel"):
                candidate = getattr(transformers, auto_name, None)
                if candidate is not None:
                    return candidate
    try:
        candidate = getattr(transformers, arch, None)
    except Exception:  # a lazy import of an optional backend failing
        candidate = None
    if isinstance(candidate, type) and issubclass(candidate, PreTrainedModel):
        return candidate
    return transformers.AutoModel


class HFLoader:
    """A Hugging Face model folder or hub snapshot: config.json + weights, tokenizer files beside them."""

    name = "hf"

    def places(self, target: Target) -> bool:
        return target.kind in ("hf-folder", "hub") and target.weights == "safetensors"

    def refuse(self, target: Target, ctx: LoadContext) -> None:
        pass

    def load(self, target: Target, ctx: LoadContext) -> Built:
        model, config = _load_hf_folder(target, ctx.trust_remote_code, ctx.placement)
        tokenizer = _load_tokenizer(target.path, ctx.trust_remote_code)
        return model, tokenizer, config, _label_map(config)
