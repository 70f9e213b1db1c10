"""What a checkpoint reference points at: an existing path, a hub snapshot, and which kind of checkpoint."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import CheckpointError
from .records import PICKLE_SUFFIXES, Target
from .safety import _check_files, _pickle_refusal, _require_regular, _special_root
from .util import _abspath, _describe_exc, _esc, _few

# Files of a folder that change what gets evaluated (weights, configs, tokenizer, code).
# README edits must not bust the cache of base-model evaluations.
_AUX_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".py", ".jinja")


_HF_PICKLE_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _describe(
    ref: str | os.PathLike[str],
    rootdir: str | os.PathLike[str] | None,
    *,
    allow_pickle: bool,
    allow_download: bool,
    trust_remote_code: bool = False,
) -> Target:
    located = _locate(ref, rootdir)
    if isinstance(located, str):  # a hub id
        snapshot = _hub_snapshot(located, allow_download=allow_download, trust_remote_code=trust_remote_code)
        inner = _describe_folder(snapshot, allow_pickle=allow_pickle)
        return Target("hub", snapshot, located, inner.weights, inner.files)
    special = _special_root(os.path.realpath(located))
    if special is not None:
        raise CheckpointError(f"{_esc(str(located))} is under {special}: kernel and device files are not checkpoints")
    if located.is_dir():
        return _describe_folder(located, allow_pickle=allow_pickle)
    _require_regular(located)
    name = located.name.lower()
    if name.endswith(".safetensors"):
        target = Target("safetensors", located, str(located), "safetensors", (located,))
    elif name.endswith(".gguf"):
        target = Target("gguf", located, str(located), "gguf", (located,))
    elif name.endswith(PICKLE_SUFFIXES):
        target = Target("pickle", located, str(located), "pickle", (located,))
    elif name == "config.json" or name == "adapter_config.json":
        raise CheckpointError(f"{located} is a config file; pass the folder that holds it: {located.parent}")
    else:
        raise CheckpointError(
            f"don't know how to load {located}: expected a model folder, a .safetensors or .gguf file "
            f"(or, with --forgetting-allow-pickle, {'/'.join(PICKLE_SUFFIXES)})"
        )
    _check_files(target)
    if target.weights == "pickle" and not allow_pickle:
        raise _pickle_refusal(located)
    return target


def _locate(ref: str | os.PathLike[str], rootdir: str | os.PathLike[str] | None) -> Path | str:
    """An existing absolute path, or a hub id; otherwise a not-found error naming where we looked."""
    raw = os.fspath(ref)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise CheckpointError("empty checkpoint reference; pass a folder, a file or a hub id (org/name)")
    path = Path(raw).expanduser()
    cwd = Path.cwd()
    candidates = [path if path.is_absolute() else cwd / path]
    if rootdir is not None and not path.is_absolute():
        candidates.append(Path(rootdir) / path)
    for candidate in candidates:
        if os.path.exists(candidate):  # os.path.exists swallows odd-name errors (NUL, too long)
            return candidate.resolve()
    looks_like_path = (  # then a typo in a path is reported as such, not as a missing hub repo
        raw.startswith((".", "/", "~", "\\"))
        or raw.lower().endswith((".safetensors", ".gguf", ".json", *PICKLE_SUFFIXES))
        or any(os.path.isdir(c.parent) for c in candidates)
    )
    if isinstance(ref, str) and _HUB_ID.fullmatch(raw) and not looks_like_path:
        return raw
    where = f"{_abspath(candidates[0])}"
    if len(candidates) > 1:
        root = Path(rootdir).resolve()  # type: ignore[arg-type]
        where += f" nor at {_abspath(candidates[1])} (relative to rootdir {root})"
    hub_hint = "" if "/" in raw else "; a Hugging Face hub id looks like org/name"
    raise CheckpointError(f"checkpoint not found: nothing at {where}; the current working directory is {cwd}{hub_hint}")


def _describe_folder(folder: Path, *, allow_pickle: bool) -> Target:
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise CheckpointError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
    # every entry but folders: a link or a FIFO named like a checkpoint file is refused by _check_files,
    # never silently skipped (a loader reading the folder itself would follow it)
    names = [n for n in entries if not os.path.isdir(folder / n)]
    safetensors = [n for n in names if n.lower().endswith(".safetensors")]
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    aux = [n for n in names if n.lower().endswith(_AUX_SUFFIXES)]

    def make(kind: str, weights: str, weight_files: Iterable[str], with_aux: bool = True) -> Target:
        chosen = sorted(set(weight_files) | (set(aux) if with_aux else set()))
        target = Target(kind, folder, str(folder), weights, tuple(folder / n for n in chosen))
        _check_files(target)
        if weights == "pickle" and not allow_pickle:
            pickled = [folder / n for n in weight_files]
            raise _pickle_refusal(pickled[0], folder / "model.safetensors" if kind == "pickle" else None)
        return target

    if "adapter_config.json" in names:
        if "adapter_model.safetensors" in names:
            return make("peft-adapter", "safetensors", ["adapter_model.safetensors"])
        if "adapter_model.bin" in names:
            return make("peft-adapter", "pickle", ["adapter_model.bin"])
        raise CheckpointError(f"PEFT adapter folder {folder} has adapter_config.json but no adapter_model.safetensors")
    if "config.json" in names:
        if safetensors:
            return make("hf-folder", "safetensors", safetensors)
        hf_pickles = [n for n in pickles if _HF_PICKLE_WEIGHTS.fullmatch(n)]
        if hf_pickles:
            return make("pickle", "pickle", hf_pickles)
        if len(ggufs) == 1:
            return make("gguf", "gguf", ggufs, with_aux=False)
        raise CheckpointError(
            f"model folder {folder} has config.json but no weights: expected model.safetensors "
            f"(or sharded model-*.safetensors); found {_few(names) or 'nothing else'}"
        )
    if len(ggufs) == 1 and not safetensors:
        return make("gguf", "gguf", ggufs, with_aux=False)
    if len(safetensors) == 1 and not ggufs:
        return make("safetensors", "safetensors", safetensors, with_aux=False)
    if len(pickles) == 1 and not safetensors and not ggufs:
        return make("pickle", "pickle", pickles, with_aux=False)
    raise CheckpointError(
        f"{folder} is not a checkpoint folder: expected config.json + *.safetensors (Hugging Face), "
        f"adapter_config.json (PEFT), or a single .safetensors / .gguf file; found {_few(names) or 'no files'}"
    )


def _hub_snapshot(repo_id: str, *, allow_download: bool, trust_remote_code: bool) -> Path:
    """The local snapshot folder of a hub repo; downloads only when allowed, never pickles."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError as exc:
        raise CheckpointError(
            f"hub id {repo_id!r} needs the huggingface_hub package: pip install huggingface_hub"
        ) from exc
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        folder = snapshot_download(repo_id, local_files_only=not allow_download, allow_patterns=patterns)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise CheckpointError(
            f"no local path {repo_id!r} exists (relative to {Path.cwd()}), and as a hub id {repo_id!r} "
            "is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE / local_files_only); "
            "fix the path if it is a typo, "
            f"or download it first (hf download {repo_id}) or pass --forgetting-allow-download"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"could not fetch {repo_id!r} from the Hugging Face hub: {_describe_exc(exc)}") from exc
    return Path(folder)
