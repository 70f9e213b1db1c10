"""What every loader shares: strict key checks, tokenizers, ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..safety import _TOKENIZER_FILES, _read_json, _require_regular
from ..util import _describe_exc, _few, _one_line_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _check_loading_info(info: dict[str, Any], folder: Path, class_name: str) -> None:
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if not (missing or unexpected or mismatched or errors):
        return
    shown = [f"{m[0]}: file {tuple(m[1])} vs model {tuple(m[2])}" if isinstance(m, tuple) and len(m) == 3 else str(m)
             for m in mismatched]  # fmt: skip
    parts = _key_problems(missing, unexpected, shown)
    if errors:
        parts.append(f"errors: {_few([_one_line_text(e) for e in errors], 2)}")
    raise CheckpointError(
        f"weights in {folder} do not match {class_name}: " + "; ".join(parts) + " — refusing to evaluate "
        "randomly initialised weights as if trained; fix 'architectures' in config.json or save the full model"
    )


def _load_tokenizer(folder: Path, trust_remote_code: bool) -> Any:
    """The tokenizer of a (staged) folder, or None when it has no tokenizer files."""
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        # transformers < 5 opened a vocab_file / merges_file / tokenizer_file named here verbatim, wherever it
        # pointed (old hub configs even hold their author's absolute cache paths); ``folder`` is our private
        # copy, so those keys are dropped from it and transformers finds the files of the folder itself
        tok_config = _read_json(config_path)
        if isinstance(tok_config, dict) and any(k.endswith("_file") for k in tok_config):
            kept = {k: v for k, v in tok_config.items() if not k.endswith("_file")}
            fd = os.open(config_path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(kept, fh)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"the tokenizer files in {folder} do not load: {_describe_exc(exc)}") from exc


def _torch_load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True, the only way this plugin ever unpickles."""
    import torch

    _require_regular(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = f"it references {found.group(1)}" if found else _describe_exc(exc)
        raise CheckpointError(
            f"torch.load(weights_only=True) refused {path} ({reason}); it holds more than tensors, which could run "
            "code, and this plugin never uses weights_only=False: save only the state_dict, as safetensors"
        ) from None
    return _state_dict_from(obj, path)


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    def is_state_dict(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
        )

    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):  # training checkpoints: Lightning's "state_dict", common "model_state_dict"
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)")


def _key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The parts of a weights-do-not-fit message: counts and the first few names of each kind."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape-mismatched ({_few(mismatched)})")
    return parts


def _prefix_hint(model_keys: set[str], file_keys: set[str]) -> str:
    """Suggest stripping (or adding) a shared key prefix such as 'module.' when that makes the keys match."""
    prefix = _stripping_prefix(file_keys, model_keys)
    if prefix:
        return (
            f"; every key in the file starts with {prefix!r} and matches once stripped: "
            f"save {{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}}"
        )
    prefix = _stripping_prefix(model_keys, file_keys)
    if prefix:
        return f"; every model key starts with {prefix!r} and the file's lack it: the factory may return a wrapper"
    return ""


def _stripping_prefix(keys: set[str], target: set[str]) -> str | None:
    for depth in (1, 2, 3):
        heads = {".".join(k.split(".")[:depth]) + "." for k in keys if k.count(".") >= depth}
        if len(heads) != 1 or len(keys) == 0 or any(k.count(".") < depth for k in keys):
            return None
        (prefix,) = heads
        if {k[len(prefix) :] for k in keys} == target:
            return prefix
    return None


def _dtype_kwarg(transformers: Any) -> str:
    """transformers renamed torch_dtype= to dtype= in 4.56."""
    numbers = [int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]]
    return "dtype" if tuple(numbers) >= (4, 56) else "torch_dtype"
