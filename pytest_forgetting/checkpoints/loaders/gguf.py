"""A GGUF file, loaded by transformers after its header and metadata were checked by hand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..compat import _label_map
from ..headers import _read_gguf_header
from ..records import Target
from ..safety import _check_counts, _refuse_oversized
from ..util import _describe_exc, _size
from .common import _check_loading_info, _dtype_kwarg
from .protocol import Built, LoadContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _load_gguf(path: Path) -> tuple[torch.nn.Module, Any]:
    """A (staged) GGUF file, checked by hand first: its metadata must describe the tensors it holds."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} ({_size(path)} bytes) is not a GGUF file (it does not start with 'GGUF')")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise CheckpointError(f"loading {path.name} needs the 'gguf' package: pip install gguf") from None
    import torch
    import transformers

    elements = _read_gguf_header(path)
    kwargs = {"gguf_file": path.name, "local_files_only": True, "trust_remote_code": False}
    try:
        config = transformers.AutoConfig.from_pretrained(str(path.parent), **kwargs)
    except Exception as exc:
        raise CheckpointError(
            f"transformers cannot read the metadata of GGUF file {path}: {_describe_exc(exc)}"
        ) from exc
    source = f"the metadata of GGUF file {path}"
    _check_counts(config.to_dict(), source)
    model_cls: Any
    try:
        model_cls = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    except Exception:
        model_cls = transformers.AutoModelForCausalLM
    # defaults fill what the metadata leaves out (a Llama-7B shape): the tensors in the file must fill that model
    _refuse_oversized(model_cls, config, elements, source, False)
    try:
        loaded: Any = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), config=config, output_loading_info=True, attn_implementation=None, **kwargs,
            **{_dtype_kwarg(transformers): torch.get_default_dtype()},
        )  # fmt: skip
    except Exception as exc:
        raise CheckpointError(f"transformers cannot load GGUF file {path}: {_describe_exc(exc)}") from exc
    model, info = loaded
    _check_loading_info(info, path, type(model).__name__)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    except Exception as exc:
        raise CheckpointError(f"the tokenizer inside GGUF file {path} does not load: {_describe_exc(exc)}") from exc
    return model.to("cpu"), tokenizer


class GGUFLoader:
    """A GGUF file (or a folder holding one): transformers dequantises it, with the tokenizer it carries."""

    name = "gguf"

    def places(self, target: Target) -> bool:
        return False

    def refuse(self, target: Target, ctx: LoadContext) -> None:
        pass

    def load(self, target: Target, ctx: LoadContext) -> Built:
        model, tokenizer = _load_gguf(target.files[0])
        config = getattr(model, "config", None)
        return model, tokenizer, config, _label_map(config)
