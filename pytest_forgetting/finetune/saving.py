"""``save_to=``: write a fine-tuned module in the form ``--tuned-ckpt`` loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._util import atomic_write
from .spec import FinetuneError


def is_peft(model: Any) -> bool:
    try:
        import peft
    except ImportError:
        return False
    return isinstance(model, peft.PeftModel)


def save_model(model: Any, path: str | os.PathLike[str], tokenizer: Any = None) -> str:
    """Write what ``--tuned-ckpt`` loads: a PEFT adapter folder, a ``.safetensors`` file, or an HF folder."""
    from safetensors.torch import save_file

    path = Path(path)
    if is_peft(model):
        if path.suffix == ".safetensors":
            raise FinetuneError(
                f"save_to={str(path)!r}: a LoRA model is saved as a PEFT adapter folder; give a folder path"
            )
        model.save_pretrained(str(path))
        return str(path)
    if path.suffix == ".safetensors":
        # clones: tied weights share storage, which safetensors refuses; both names stay for strict loading
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        # perm 0o666: the file ends with the umask's permissions, as when save_file writes it in place
        atomic_write(path, lambda tmp: save_file(state, tmp), perm=0o666, by_name=True)
        return str(path)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(path))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(path))
        return str(path)
    raise FinetuneError(
        f"save_to={str(path)!r}: a plain nn.Module is saved as a single .safetensors file "
        "(loaded with --model-factory); "
        "end the path with .safetensors"
    )
