"""Checks of untrusted checkpoint files before anything parses them.

Every file a loader would read must resolve inside the checkpoint folder (or, for a Hugging Face
cache snapshot, its repository's ``blobs``), never into /proc, /sys or /dev, be a regular file of a
plausible size and not a Git LFS pointer; small files are read at most cap + 1 bytes from one open
file and JSON is parsed with its errors caught; configs with absurd layer / expert / label counts,
checkpoints that carry Python code and models bigger than their weights are refused; pickles are
refused unless allowed. Weight-file headers are validated in ``headers.py``, and loaders only ever
read the private copies made by ``staging.py``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .records import PICKLE_SUFFIXES, Target
from .util import _describe_exc, _esc, _excerpt, _few, _is_int

_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_LFS_POINTER_MAX = 1024  # real pointers are ~130 bytes
# Size caps of a checkpoint's small files, checked before reading (the largest real ones are far
# below: an ImageNet-22k config with every label name ~2 MB, Gemma's tokenizer.json ~33 MB).
_CONFIG_FILES = frozenset({"config.json", "adapter_config.json", "generation_config.json", "preprocessor_config.json"})
_MAX_CONFIG_BYTES = 4 << 20
_MAX_TOKENIZER_BYTES = 128 << 20
_MAX_AUX_BYTES = 256 << 20
_TOKENIZER_AUX = frozenset({"merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.json"})
_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_MAX_FOLDER_ENTRIES = 10_000
_TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "vocab.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
    }
)
# Config fields whose absurd values make model construction itself slow or memory-hungry
# (one module per layer / expert, one dict entry per label), checked before anything is
# built. The limits are far above any released model (the deepest have ~160 layers) and
# keep even the meta-device size check below to a couple of seconds.
_COUNT_LIMITS = (
    (re.compile(r"layers|layer$|blocks"), 256),
    (re.compile(r"experts"), 1024),
    (re.compile(r"num_labels"), 100_000),
)


def _check_files(target: Target) -> None:
    """Every file we would read: inside the checkpoint, a regular file of a plausible size, not a Git LFS pointer."""
    roots = _allowed_roots(target.path) if target.path.is_dir() else None
    for path in target.files:
        size = _require_safe(path, roots).st_size
        if size <= _LFS_POINTER_MAX:
            with open(path, "rb") as fh:
                head = fh.read(len(_LFS_MAGIC))
            if head == _LFS_MAGIC:
                raise CheckpointError(
                    f"{path} is a Git LFS pointer, not weights; run `git lfs pull` (in CI: lfs: true)"
                )


def _require_regular(path: Path) -> int:
    """The size of a regular file; anything else (missing, FIFO, device) is an error, never a hang."""
    return _require_regular_stat(path).st_size


def _require_regular_stat(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    return st


def _size_cap(name: str) -> int | None:
    """The largest plausible size of a checkpoint file named ``name`` (None: weights, checked against their header)."""
    lower = name.lower()
    if lower.endswith((".safetensors", ".gguf", *PICKLE_SUFFIXES)):
        return None
    if lower in _CONFIG_FILES:
        return _MAX_CONFIG_BYTES
    if lower in _TOKENIZER_FILES or lower in _TOKENIZER_AUX or lower.endswith((".model", ".tiktoken", ".jinja")):
        return _MAX_TOKENIZER_BYTES
    return _MAX_AUX_BYTES  # files no loader parses (trainer_state.json, results): only copied and hashed


def _allowed_roots(folder: Path) -> tuple[str, ...]:
    """Where the files of ``folder`` may really live: the folder itself, and for a Hugging Face cache
    snapshot (``models--org--name/snapshots/<rev>``) the repository's ``blobs`` folder its links point into."""
    real = os.path.realpath(folder)
    snapshots = os.path.dirname(real)
    repo = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(repo).startswith(("models--", "datasets--")):
        return (real, os.path.join(repo, "blobs"))
    return (real,)


def _special_root(real: str) -> str | None:
    for root in _SPECIAL_ROOTS:
        if real == root or real.startswith(root + os.sep):
            return root
    return None


def _require_safe(path: Path, roots: tuple[str, ...] | None, cap: int | None = -1) -> os.stat_result:
    """``path`` checked before anything reads it: it resolves inside ``roots`` (None: no containment, for a
    file the user named), not into /proc, /sys or /dev (whose files claim size 0 or never end), it is a
    regular file, and it is at most ``cap`` bytes (default: the cap for its name; None: no cap)."""
    real = os.path.realpath(path)
    special = _special_root(real)
    name = _esc(path.name)
    if special is not None:
        raise CheckpointError(
            f"{name} in {_esc(str(path.parent))} leads into {special} (a kernel or device file, not checkpoint data); "
            "refusing to read it: replace the link with the real file"
        )
    if roots is not None and not any(os.path.dirname(real) == r or real.startswith(r + os.sep) for r in roots):
        raise CheckpointError(
            f"{name} in {_esc(str(path.parent))} is a link that leads outside the checkpoint folder; refusing to read "
            "it: copy the file itself into the folder"
        )
    st = _require_regular_stat(path)
    if cap == -1:
        cap = _size_cap(path.name)
    if cap is not None and st.st_size > cap:
        raise CheckpointError(
            f"{name} in {_esc(str(path.parent))} is {st.st_size:,} bytes, more than a plausible {name} "
            f"({cap >> 20} MiB at most); is it really part of this checkpoint?"
        )
    return st


def _read_capped(path: Path, cap: int, roots: tuple[str, ...] | None = None) -> bytes:
    """The bytes of a small file, checked by :func:`_require_safe` and read at most ``cap + 1`` bytes
    from the one open file (whose fstat must agree): a size that lies never makes this read unbounded."""
    st = _require_safe(path, roots, cap)
    with open(path, "rb") as fh:
        fst = os.fstat(fh.fileno())
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise CheckpointError(f"{_esc(str(path))} changed while being opened; run again once nothing writes to it")
        raw = fh.read(cap + 1)
    if len(raw) > cap:
        raise CheckpointError(f"{_esc(str(path))} holds more than {cap:,} bytes, too large for a {_esc(path.name)}")
    return raw


def _read_json(path: Path, cap: int | None = None) -> Any:
    """A JSON file of a checkpoint folder (config, adapter config, index): contained, capped, parsed safely."""
    raw = _read_capped(path, cap or _size_cap(path.name) or _MAX_CONFIG_BYTES, _allowed_roots(path.parent))
    if raw.startswith(_LFS_MAGIC):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the real file; run `git lfs pull`")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({_describe_exc(exc, with_type=False)})") from None


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(config).__name__}")
    _check_counts(config, str(path))
    return config


def _check_counts(config: dict[str, Any], source: str) -> None:
    """Refuse layer / expert / label counts far beyond any released model, before anything is built."""
    for key, value in _walk_config(config):
        for pattern, limit in _COUNT_LIMITS:
            if isinstance(key, str) and pattern.search(key) and _is_int(value) and value > limit:
                raise CheckpointError(
                    f"{source}: {_esc(key, 60)}={value} is implausible (limit {limit}); is this config corrupt?"
                )


def _walk_config(config: dict[str, Any], depth: int = 0) -> Iterable[tuple[str, Any]]:
    for key, value in config.items():
        yield key, value
        if isinstance(value, dict) and depth < 3:  # nested text_config / vision_config
            yield from _walk_config(value, depth + 1)


def _refuse_remote_code(folder: Path, trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    reasons: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if os.path.lexists(path):
            content = _read_json(path)
            if isinstance(content, dict) and "auto_map" in content:
                reasons.append(f"auto_map in {name}")
            if isinstance(content, dict) and name == "config.json":
                reasons += [
                    f"attn_implementation={_excerpt(value, 60)} in {name}, "
                    "a kernel transformers would download and import"
                    for value in _unknown_attn_implementations(content)
                ]
    py_files: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        seen += len(dirnames) + len(filenames)
        if seen > _MAX_FOLDER_ENTRIES:
            raise CheckpointError(f"{folder} holds more than {_MAX_FOLDER_ENTRIES} files; is it really a checkpoint?")
        py_files += sorted(os.path.relpath(os.path.join(dirpath, f), folder) for f in filenames if f.endswith(".py"))
    if py_files:
        reasons.append(_few(py_files, 3))
    if reasons:
        raise CheckpointError(
            f"this checkpoint carries its own Python code ({'; '.join(reasons)}); pass "
            "--forgetting-trust-remote-code only if you trust its author"
        )


#: attention implementations transformers ships; anything else names a kernel on the hub (remote code)
_BUILTIN_ATTN = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_ATTN_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def _unknown_attn_implementations(config: dict[str, Any]) -> list[Any]:
    """attn_implementation values of a config (and its sub-configs) that are not built into transformers."""
    found = []
    for key, value in _walk_config(config):
        if key not in _ATTN_KEYS or value is None:
            continue
        values = value.values() if isinstance(value, dict) else [value]
        found += [v for v in values if v is not None and v not in _BUILTIN_ATTN]
    return found


def _attn_kwarg(config_dict: dict[str, Any], trust_remote_code: bool) -> dict[str, Any]:
    """The explicit, safe ``attn_implementation`` to load with (overriding whatever config.json holds).

    A built-in name is kept; flash attention only when its package is installed (transformers would
    otherwise fetch a kernel from the hub instead); anything else was refused as remote code unless
    trusted. None lets transformers choose between sdpa and eager.
    """
    requested = next((config_dict.get(k) for k in _ATTN_KEYS if config_dict.get(k) is not None), None)
    if trust_remote_code and requested is not None:
        return {}
    if isinstance(requested, str) and requested in _FLASH_PACKAGES:
        import importlib.util

        if importlib.util.find_spec(_FLASH_PACKAGES[requested]) is None:
            requested = None
    if not (isinstance(requested, str) and requested in _BUILTIN_ATTN):
        requested = None
    return {"attn_implementation": requested}


def _pickle_refusal(path: Path, out: Path | None = None) -> CheckpointError:
    out = out or path.with_suffix(".safetensors")
    command = (
        "python -c 'import torch; from safetensors.torch import save_file; "
        f"save_file(torch.load({json.dumps(str(path))}, weights_only=True), {json.dumps(str(out))})'"
    )
    return CheckpointError(
        f"{path} is a pickle; pickle checkpoints can run code when loaded; convert to safetensors: "
        f"{command} or pass --forgetting-allow-pickle"
    )


def _refuse_oversized(model_cls: Any, config: Any, checkpoint_elements: int, source: str, trust: bool) -> None:
    """Refuse a config that describes more parameters than the weight files hold.

    Every parameter must come from the files (a missing one is refused anyway), so a model
    bigger than its weights is a config that does not belong to them, and allocating it
    first can exhaust memory or take minutes; measuring it on the meta device is cheap.
    Buffers (position ids, masks) are not in the files; they only get a generous bound.
    Building even on the meta device takes seconds for a 7B shape, so two cheap lower bounds of
    what any such model holds (its embedding matrix; one hidden x hidden matrix per layer), with
    a factor 4 of slack for factorised embeddings, refuse the grossest mismatches first.
    """
    import torch

    text = getattr(config, "get_text_config", lambda: config)()
    dims: dict[str, Any] = {k: getattr(text, k, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}
    if all(_is_int(v) and v > 0 for v in dims.values()):
        vocab, hidden, layers = dims["vocab_size"], dims["hidden_size"], dims["num_hidden_layers"]
        floor = max(vocab * hidden, layers * hidden * hidden)
        if floor > 4 * checkpoint_elements + (1 << 20):
            raise CheckpointError(
                f"{source} describes a model of at least {floor:,} parameters "
                f"(vocab_size={vocab}, hidden_size={hidden}, "
                f"{layers} layers) but the weight files hold only {checkpoint_elements:,} values; the config does not "
                "belong to these weights"
            )
    try:
        with torch.device("meta"):
            if hasattr(model_cls, "_from_config"):
                skeleton = model_cls._from_config(config)
            else:
                skeleton = model_cls.from_config(config, trust_remote_code=trust)
    except Exception:
        return  # the real load below reports what is wrong with the config
    params = sum(p.numel() for p in skeleton.parameters())  # shared (tied) parameters counted once
    buffers = sum(b.numel() for b in skeleton.buffers())
    if params > checkpoint_elements * 1.05 + 1024 or buffers > checkpoint_elements * 1.25 + (1 << 24):
        raise CheckpointError(
            f"{source} describes a model of {params:,} parameters and {buffers:,} buffer values but "
            f"the weight files hold only {checkpoint_elements:,} values; the config does not belong to these weights"
        )
