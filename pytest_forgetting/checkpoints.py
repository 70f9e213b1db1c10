"""Loading the base and the fine-tuned checkpoint, safely.

Checkpoints arrive in pull requests, so every file this module reads is untrusted input.
The rules, in the order they are applied:

* Nothing here ever unpickles with ``weights_only=False``. Pickle formats (``.bin``, ``.pt``,
  ``.pth``, ``.ckpt``, ``.pkl``) are refused unless the user opts in, and even then they go
  through ``torch.load(..., weights_only=True)`` only.
* A checkpoint that carries Python code (``auto_map`` in its config, any ``*.py`` file, an
  ``attn_implementation`` naming a hub kernel) is refused unless the user says they trust its
  author; models are loaded with an explicit built-in attention implementation.
* Files are checked before a third-party loader sees them: each must resolve inside the
  checkpoint folder (or, for a Hugging Face cache snapshot, its repository's ``blobs``), never
  into /proc, /sys or /dev, be a regular file (a FIFO would hang the reader) of a plausible
  size (configs 4 MiB, tokenizer files 128 MiB, others 256 MiB), and not a Git LFS pointer; small files are
  read at most cap + 1 bytes; safetensors and GGUF headers are validated by hand; JSON is
  parsed with its errors caught.
* Loaders never read the checkpoint itself: they get private copies, taken once from one
  open file each and fstat-checked (``_Stage``), so a link cannot lead them out of the folder
  and a file rewritten while memory-mapped cannot kill the process with SIGBUS.
* Model sizes are checked before anything is allocated, for every loader: a config (or GGUF
  metadata, or PEFT adapter config) must describe exactly what the weight files hold (a meta
  device build against the tensors in the headers); a factory's module against the header.
* Messages quote file contents only as short, escaped excerpts (tokens, labels, tensor names).
* Loading is strict: a missing, unexpected or mis-shaped weight is an error, never a randomly
  initialised layer evaluated as if it had been trained.
* Every problem is a one-line :class:`~pytest_forgetting.errors.CheckpointError`.

torch, transformers, safetensors and peft are imported inside the functions that need them:
pytest imports the plugin in every run of every project.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import json
import math
import os
import re
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "KINDS",
    "LoadedCheckpoint",
    "check_compatible",
    "fingerprint_ref",
    "load_checkpoint",
    "nonfinite_params",
    "resolve_factory",
]

KINDS = ("hf-folder", "peft-adapter", "safetensors", "gguf", "hub", "module", "pickle")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_LFS_POINTER_MAX = 1024  # real pointers are ~130 bytes
_CHUNK = 1 << 20
_COPY_CHUNK = 8 << 20
# Size caps of a checkpoint's small files, checked before reading (the largest real ones are far
# below: an ImageNet-22k config with every label name ~2 MB, Gemma's tokenizer.json ~33 MB).
_CONFIG_FILES = frozenset({"config.json", "adapter_config.json", "generation_config.json", "preprocessor_config.json"})
_MAX_CONFIG_BYTES = 4 << 20
_MAX_TOKENIZER_BYTES = 128 << 20
_MAX_AUX_BYTES = 256 << 20
_TOKENIZER_AUX = frozenset({"merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.json"})
_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit
_MAX_FOLDER_ENTRIES = 10_000
# Files of a folder that change what gets evaluated (weights, configs, tokenizer, code).
# README edits must not bust the cache of base-model evaluations.
_AUX_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".py", ".jinja")
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
_HF_PICKLE_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_FACTORY_SPEC = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
# Config fields whose absurd values make model construction itself slow or memory-hungry
# (one module per layer / expert, one dict entry per label), checked before anything is
# built. The limits are far above any released model (the deepest have ~160 layers) and
# keep even the meta-device size check below to a couple of seconds.
_COUNT_LIMITS = (
    (re.compile(r"layers|layer$|blocks"), 256),
    (re.compile(r"experts"), 1024),
    (re.compile(r"num_labels"), 100_000),
)
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_ST_SUBBYTE_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

Ref = Union[str, "os.PathLike[str]", "torch.nn.Module"]


@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded for evaluation.

    ``model`` is in eval mode, on the CPU, in the default dtype; the caller moves it.
    """

    model: "torch.nn.Module" = field(repr=False)
    ref: str  # as the user gave it
    resolved: str  # absolute path, hub id, or "<in-memory ClassName>"
    kind: str  # one of KINDS
    fingerprint: str  # "sha256:<hex>"
    tokenizer: object | None = field(default=None, repr=False)
    config: object | None = field(default=None, repr=False)
    label_map: dict[int, str] | None = None  # config.id2label when the names mean something


@dataclass(frozen=True)
class _Placement:
    """How accelerate splits a Hugging Face model over devices (``from_pretrained(device_map=...)``)."""

    device_map: str | dict[str, int | str]
    max_memory: dict[int | str, int | str] | None = None
    offload_folder: str | os.PathLike[str] | None = None
    dtype: Any = None


@dataclass(frozen=True)
class _Target:
    """Where a reference points and what its fingerprint covers; nothing loaded yet."""

    kind: str
    path: Path  # the file or folder to load (for a hub id: its snapshot folder)
    resolved: str
    weights: str  # how the weights are stored: "safetensors" | "pickle" | "gguf"
    files: tuple[Path, ...]  # hashed into the fingerprint


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def fingerprint_ref(
    ref: Ref,
    *,
    rootdir: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    allow_download: bool = False,
    digests: FileDigests | None = None,
) -> str:
    """Content fingerprint of a checkpoint reference, without loading the model.

    Files: sha256 over (relative name, size, sha256 of the bytes) of the weight, config and
    tokenizer files in sorted order, streamed in 1 MiB chunks; ``digests`` remembers the
    per-file hashes of unchanged files (see :class:`FileDigests`). An ``nn.Module``: sha256 over its sorted
    state_dict (name, dtype, shape, bytes). A hub id is looked up in the local cache
    (``allow_download`` fetches it first). Pickle references are refused unless
    ``allow_pickle``, exactly as :func:`load_checkpoint` would.
    """
    try:
        if not isinstance(ref, (str, os.PathLike)):
            return _fingerprint_module(_as_module(ref))
        target = _describe(ref, rootdir, allow_pickle=allow_pickle, allow_download=allow_download)
        return _fingerprint_files(target, digests)
    except CheckpointError:
        raise
    except Exception as exc:  # a bug or an exotic file: still one clear line
        raise CheckpointError(f"cannot fingerprint checkpoint {_show(ref)}: {_describe_exc(exc)}") from exc


def load_checkpoint(
    ref: Ref,
    *,
    role: str = "tuned",
    model_factory: str | Callable[[], "torch.nn.Module"] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    allow_download: bool = False,
    rootdir: str | os.PathLike[str] | None = None,
    base: LoadedCheckpoint | None = None,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    dtype: "str | torch.dtype | None" = None,
    digests: FileDigests | None = None,
) -> LoadedCheckpoint:
    """Load ``ref`` (a path, a hub id or an ``nn.Module``) under the safety rules above.

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
    was split). Other checkpoint kinds are refused with a device map. ``digests`` remembers
    file hashes for the fingerprint (see :func:`fingerprint_ref`).
    """
    try:
        return _load(
            ref,
            model_factory=model_factory,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            allow_download=allow_download,
            rootdir=rootdir,
            base=base,
            placement=_Placement(device_map, max_memory, offload_folder, dtype) if device_map is not None else None,
            digests=digests,
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{role} checkpoint {_show(ref)}: {exc}") from exc.__cause__
    except Exception as exc:  # a loader's own exception type: never let it escape raw
        raise CheckpointError(f"{role} checkpoint {_show(ref)}: could not load: {_describe_exc(exc)}") from exc


def check_compatible(base: LoadedCheckpoint, tuned: LoadedCheckpoint) -> None:
    """Refuse a pair whose outputs cannot be compared example by example.

    Raises :class:`CheckpointError` when both define label names (``id2label``) and they
    differ, or both have a tokenizer and the vocabularies differ.
    """
    base_labels, tuned_labels = _id2label(base), _id2label(tuned)
    if base_labels is not None and tuned_labels is not None and base_labels != tuned_labels:
        diffs = []
        for key in sorted(base_labels.keys() | tuned_labels.keys()):
            b, t = base_labels.get(key), tuned_labels.get(key)
            if b != t:
                diffs.append(f"{key}: {'missing' if b is None else _excerpt(b)} vs {'missing' if t is None else _excerpt(t)}")
        raise CheckpointError(
            f"base and tuned label maps (id2label) differ: {_few(diffs, 3)} (base vs tuned); paired "
            "comparison needs the same class ids, so make id2label agree in both config.json files"
        )
    if base.tokenizer is None or tuned.tokenizer is None:
        return
    try:
        base_vocab = dict(base.tokenizer.get_vocab())  # type: ignore[attr-defined]
        tuned_vocab = dict(tuned.tokenizer.get_vocab())  # type: ignore[attr-defined]
    except Exception as exc:
        raise CheckpointError(f"cannot read the tokenizers' vocabularies: {_describe_exc(exc)}") from exc
    if base_vocab == tuned_vocab:
        return
    only_base = sorted(base_vocab.keys() - tuned_vocab.keys())
    only_tuned = sorted(tuned_vocab.keys() - base_vocab.keys())
    moved = sorted(t for t in base_vocab.keys() & tuned_vocab.keys() if base_vocab[t] != tuned_vocab[t])
    # tokens are file content: a few short, escaped excerpts only (never whole lines of a vocabulary file)
    parts = [f"base has {len(base_vocab)} tokens, tuned {len(tuned_vocab)}"]
    if only_base:
        parts.append(f"only in base: {_few([_excerpt(t) for t in only_base], 3)}")
    if only_tuned:
        parts.append(f"only in tuned: {_few([_excerpt(t) for t in only_tuned], 3)}")
    if moved:
        parts.append(f"different ids: {_few([f'{_excerpt(t)} ({base_vocab[t]} vs {tuned_vocab[t]})' for t in moved], 3)}")
    raise CheckpointError(
        "base and tuned tokenizers have different vocabularies (" + "; ".join(parts) + "); the two models "
        "would see different inputs, so ship the base tokenizer with the tuned checkpoint"
    )


def load_metadata(ref: Any, *, rootdir: str | os.PathLike[str] | None = None, trust_remote_code: bool = False) -> LoadedCheckpoint:
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
    stage = _Stage(_Target(target.kind, located, str(located), target.weights, aux))
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


def resolve_factory(spec: str, rootdir: str | os.PathLike[str] | None = None) -> Callable[[], "torch.nn.Module"]:
    """Turn ``"package.module:callable"`` into a callable that builds an ``nn.Module``.

    ``rootdir`` is put on ``sys.path`` first so a project's own modules import. The returned
    callable raises :class:`CheckpointError` when the factory fails or returns something
    other than an ``nn.Module``.
    """
    match = _FACTORY_SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise CheckpointError(
            f"--model-factory {spec!r} is not of the form 'package.module:callable' (e.g. 'models.cnn:build')"
        )
    module_name, attr_path = match.groups()
    if rootdir is not None:
        root = str(Path(rootdir).resolve())
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            where = f" (rootdir {rootdir} is on sys.path)" if rootdir is not None else ""
            raise CheckpointError(
                f"--model-factory {spec!r}: no module named {exc.name!r}{where}; check the spelling or install it"
            ) from None
        raise CheckpointError(f"--model-factory {spec!r}: importing {module_name!r} failed: {_describe_exc(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise CheckpointError(f"--model-factory {spec!r}: importing {module_name!r} failed: {_describe_exc(exc)}") from exc
    obj: Any = module
    walked = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CheckpointError(f"--model-factory {spec!r}: {walked!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    if not callable(obj):
        raise CheckpointError(f"--model-factory {spec!r}: {walked} is a {type(obj).__name__}, not a callable")
    return _Factory(spec, obj)


def nonfinite_params(model: "torch.nn.Module", limit: int = 5) -> list[str]:
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


# --------------------------------------------------------------------------------------
# Finding what a reference points at
# --------------------------------------------------------------------------------------


def _describe(
    ref: str | os.PathLike[str],
    rootdir: str | os.PathLike[str] | None,
    *,
    allow_pickle: bool,
    allow_download: bool,
    trust_remote_code: bool = False,
) -> _Target:
    located = _locate(ref, rootdir)
    if isinstance(located, str):  # a hub id
        snapshot = _hub_snapshot(located, allow_download=allow_download, trust_remote_code=trust_remote_code)
        inner = _describe_folder(snapshot, allow_pickle=allow_pickle)
        return _Target("hub", snapshot, located, inner.weights, inner.files)
    special = _special_root(os.path.realpath(located))
    if special is not None:
        raise CheckpointError(f"{_esc(str(located))} is under {special}: kernel and device files are not checkpoints")
    if located.is_dir():
        return _describe_folder(located, allow_pickle=allow_pickle)
    _require_regular(located)
    name = located.name.lower()
    if name.endswith(".safetensors"):
        target = _Target("safetensors", located, str(located), "safetensors", (located,))
    elif name.endswith(".gguf"):
        target = _Target("gguf", located, str(located), "gguf", (located,))
    elif name.endswith(PICKLE_SUFFIXES):
        target = _Target("pickle", located, str(located), "pickle", (located,))
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
    raise CheckpointError(
        f"checkpoint not found: nothing at {where}; the current working directory is {cwd}{hub_hint}"
    )


def _describe_folder(folder: Path, *, allow_pickle: bool) -> _Target:
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

    def make(kind: str, weights: str, weight_files: Iterable[str], with_aux: bool = True) -> _Target:
        chosen = sorted(set(weight_files) | (set(aux) if with_aux else set()))
        target = _Target(kind, folder, str(folder), weights, tuple(folder / n for n in chosen))
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
        raise CheckpointError(f"hub id {repo_id!r} needs the huggingface_hub package: pip install huggingface_hub") from exc
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        folder = snapshot_download(repo_id, local_files_only=not allow_download, allow_patterns=patterns)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise CheckpointError(
            f"no local path {repo_id!r} exists (relative to {Path.cwd()}), and as a hub id {repo_id!r} is not in the local "
            f"Hugging Face cache and downloads are off (HF_HUB_OFFLINE / local_files_only); fix the path if it is a typo, "
            f"or download it first (hf download {repo_id}) or pass --forgetting-allow-download"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"could not fetch {repo_id!r} from the Hugging Face hub: {_describe_exc(exc)}") from exc
    return Path(folder)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _load(
    ref: Ref,
    *,
    model_factory: str | Callable[[], "torch.nn.Module"] | None,
    allow_pickle: bool,
    trust_remote_code: bool,
    allow_download: bool,
    rootdir: str | os.PathLike[str] | None,
    base: LoadedCheckpoint | None,
    placement: _Placement | None = None,
    digests: FileDigests | None = None,
) -> LoadedCheckpoint:
    if not isinstance(ref, (str, os.PathLike)):
        if placement is not None:
            raise CheckpointError(DEVICE_MAP_NEEDS_HF_FOLDER + "; dispatch an in-memory module yourself (accelerate.dispatch_model)")
        module = _as_module(ref)
        module.eval()
        config = getattr(module, "config", None)
        name = f"<in-memory {type(module).__name__}>"
        from .tasks.base import tokenizer_of

        return LoadedCheckpoint(
            model=module, ref=name, resolved=name, kind="module", fingerprint=_fingerprint_module(module),
            tokenizer=tokenizer_of(module), config=config, label_map=_label_map(config),
        )  # fmt: skip

    target = _describe(
        ref, rootdir, allow_pickle=allow_pickle, allow_download=allow_download, trust_remote_code=trust_remote_code
    )
    factory = _as_factory(model_factory, rootdir)
    folder = target.path if target.path.is_dir() else None
    if placement is not None and not (
        target.kind in ("hf-folder", "hub") and target.weights == "safetensors" and folder is not None and (folder / "config.json").is_file()
    ):
        what = {"peft-adapter": "a PEFT adapter", "safetensors": "a bare .safetensors file", "gguf": "a GGUF file"}.get(target.kind, f"a {target.kind} checkpoint")
        raise CheckpointError(f"{DEVICE_MAP_NEEDS_HF_FOLDER}, not {what}")
    has_config = folder is not None and (folder / "config.json").is_file()
    if folder is not None:
        _refuse_remote_code(folder, trust_remote_code)
    if target.kind != "peft-adapter" and target.weights != "gguf" and not has_config and factory is None:
        parent = target.files[0].parent
        if (parent / "config.json").is_file():  # a file of a Hugging Face folder: the folder is the checkpoint
            raise CheckpointError(
                f"a weights file inside the Hugging Face model folder {_esc(str(parent))} (config.json beside it): "
                "pass the folder, not a file inside it"
            )
        raise CheckpointError(
            f"{target.files[0]} holds bare weights without an architecture; pass --model-factory "
            "module:callable (a function returning the nn.Module to load them into)"
        )

    _check_weight_headers(target)  # before copying: a weights file must be what its header says, no bigger
    stage = _Stage(target)  # validated private copies: all that the loaders below ever read
    fingerprint = stage.fingerprint
    try:
        model, tokenizer, config, label_map = _load_staged(stage.target, factory, base, trust_remote_code, placement)
    except CheckpointError as exc:
        stage.remove()
        raise stage.unstage(exc) from exc.__cause__
    except BaseException:
        stage.remove()
        raise
    if placement is not None:  # accelerate may read offloaded weights from the copies later
        stage.keep_while(model)
    else:
        stage.remove()
    for obj in (config, getattr(model, "config", None)):
        if obj is not None and hasattr(obj, "_name_or_path"):
            obj._name_or_path = target.resolved  # not the private copy's name
    if hasattr(model, "name_or_path"):
        model.name_or_path = target.resolved
    if tokenizer is not None and hasattr(tokenizer, "name_or_path") and tokenizer is not getattr(base, "tokenizer", None):
        tokenizer.name_or_path = target.resolved

    model.eval()
    from .tasks.base import attach_tokenizer

    attach_tokenizer(model, tokenizer)  # in-memory uses of the module (fixtures, finetune) tokenise alike
    return LoadedCheckpoint(
        model=model, ref=_show(ref, quote=False), resolved=target.resolved, kind=target.kind,
        fingerprint=fingerprint, tokenizer=tokenizer, config=config, label_map=label_map,
    )  # fmt: skip


def _check_weight_headers(target: _Target) -> None:
    """Validate the safetensors and GGUF headers of the original files (reading only their headers)."""
    for path in target.files:
        lower = path.name.lower()
        if lower.endswith(".safetensors"):
            _read_safetensors_header(path)
        elif lower.endswith(".gguf") and target.weights == "gguf":
            with open(path, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    continue  # _load_gguf says so
            try:
                import gguf  # noqa: F401
            except ImportError:
                continue  # _load_gguf says what to install
            _read_gguf_header(path)


def _load_staged(
    target: _Target, factory: _Factory | None, base: LoadedCheckpoint | None, trust_remote_code: bool,
    placement: _Placement | None,
) -> tuple["torch.nn.Module", Any, Any, dict[int, str] | None]:
    """Build the model of a staged target (its files are private, validated copies)."""
    folder = target.path if target.path.is_dir() else None
    tokenizer = config = None
    if target.kind == "peft-adapter":
        return _load_adapter(target, base, trust_remote_code)
    if target.weights == "gguf":
        model, tokenizer = _load_gguf(target.files[0])
        config = getattr(model, "config", None)
        return model, tokenizer, config, _label_map(config)
    if folder is not None and (folder / "config.json").is_file():  # hf-folder, hub, pickled HF folder
        model, config = _load_hf_folder(target, trust_remote_code, placement)
        tokenizer = _load_tokenizer(folder, trust_remote_code)
        return model, tokenizer, config, _label_map(config)
    # a bare weights file (or a folder holding just one): the factory builds the module
    weights_file = target.files[0]
    assert factory is not None  # refused by _load before copying anything
    if target.weights == "safetensors":
        shapes = {k: shape for k, (_dtype, shape) in _read_safetensors_header(weights_file).items()}
        model = factory()  # trusted code (the project's own); checked against the header before any tensor is read
        _check_state_dict_fits(model, shapes, weights_file, factory)
        state_dict = _load_safetensors(weights_file)
    else:
        state_dict = _torch_load_weights_only(weights_file)
        model = factory()
        _check_state_dict_fits(model, {k: tuple(v.shape) for k, v in state_dict.items()}, weights_file, factory)
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        raise CheckpointError(f"{weights_file}: load_state_dict failed: {_describe_exc(exc)}") from exc
    model.to("cpu")
    config = getattr(model, "config", None)
    return model, tokenizer, config, _label_map(config)


def _load_hf_folder(target: _Target, trust_remote_code: bool, placement: _Placement | None = None) -> tuple["torch.nn.Module", Any]:
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
        raise CheckpointError(f"{folder / 'config.json'} is not a valid transformers config: {_describe_exc(exc)}") from exc
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


def _placement_kwargs(placement: _Placement, folder: Path) -> dict[str, Any]:
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
    dims = {k: getattr(text, k, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}
    if all(_is_int(v) and v > 0 for v in dims.values()):
        vocab, hidden, layers = dims["vocab_size"], dims["hidden_size"], dims["num_hidden_layers"]
        floor = max(vocab * hidden, layers * hidden * hidden)
        if floor > 4 * checkpoint_elements + (1 << 20):
            raise CheckpointError(
                f"{source} describes a model of at least {floor:,} parameters (vocab_size={vocab}, hidden_size={hidden}, "
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


def _load_adapter(
    target: _Target, base: LoadedCheckpoint | None, trust_remote_code: bool
) -> tuple["torch.nn.Module", Any, Any, dict[int, str] | None]:
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
        raise CheckpointError(f"{folder} is a PEFT adapter; loading it needs the peft package: pip install peft") from exc
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


def _dry_run_adapter(folder: Path, base_model: "torch.nn.Module", file_shapes: dict[str, tuple[int, ...]]) -> None:
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
    rank_pattern = getattr(config, "rank_pattern", None) if str(getattr(config, "peft_type", "")).endswith("ADALORA") else None
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
        shown = [f"{k.removeprefix('base_model.model.')}: file {tuple(file_shapes[k])} vs config {expected[k]}" for k in mismatched]
        raise CheckpointError(
            f"PEFT adapter {folder} does not fit the base model: " + "; ".join(_key_problems(missing, unexpected, shown))
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


def _meta_copy(model: "torch.nn.Module") -> "torch.nn.Module":
    """A copy of ``model`` whose parameters and buffers live on the meta device (nothing allocated)."""
    import torch

    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in memo:
            meta = tensor.detach().to("meta")
            memo[id(tensor)] = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _load_gguf(path: Path) -> tuple["torch.nn.Module", Any]:
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
        raise CheckpointError(f"transformers cannot read the metadata of GGUF file {path}: {_describe_exc(exc)}") from exc
    source = f"the metadata of GGUF file {path}"
    _check_counts(config.to_dict(), source)
    try:
        model_cls = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    except Exception:
        model_cls = transformers.AutoModelForCausalLM
    # defaults fill what the metadata leaves out (a Llama-7B shape): the tensors in the file must fill that model
    _refuse_oversized(model_cls, config, elements, source, False)
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), config=config, output_loading_info=True, attn_implementation=None, **kwargs,
            **{_dtype_kwarg(transformers): torch.get_default_dtype()},
        )  # fmt: skip
    except Exception as exc:
        raise CheckpointError(f"transformers cannot load GGUF file {path}: {_describe_exc(exc)}") from exc
    _check_loading_info(info, path, type(model).__name__)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    except Exception as exc:
        raise CheckpointError(f"the tokenizer inside GGUF file {path} does not load: {_describe_exc(exc)}") from exc
    return model.to("cpu"), tokenizer


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_GGUF_HEADER = 256 << 20  # metadata + tensor table; a 262k-token vocabulary takes ~6 MB
_MAX_GGUF_KEEP = 4096  # longer metadata strings (chat templates) are skipped, not kept
_MAX_GGUF_TOKENS = 1 << 21
_GGUF_COUNT_LIMITS = ((".block_count", 256), (".expert_count", 1024), (".expert_used_count", 1024))


class _GGUFArray:
    """A metadata array, kept as its length only (token lists, scores, merges)."""

    def __init__(self, item_type: int, count: int) -> None:
        self.item_type, self.count = item_type, count


def _read_gguf_header(path: Path) -> int:
    """Validate a GGUF file's header by hand, reading at most its header; returns the number of tensor elements.

    Every length is checked against the bytes left before it is used, each tensor's byte range
    (from its ggml type and shape) must lie in the file and not overlap another, and layer, expert
    and vocabulary counts must be plausible: a 576-byte file cannot describe a 7-billion-parameter
    model, nor metadata ask for 1.6 million layers.
    """
    import gguf

    size = _require_regular(path)

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} ({size:,} bytes) is not a valid GGUF file: {reason}")

    limit = min(size, _MAX_GGUF_HEADER)
    with open(path, "rb") as fh:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if n > limit - pos:
                raise bad(
                    f"it claims {n:,} more bytes at offset {pos:,} than "
                    + ("the file holds (truncated?)" if limit == size else f"a header may take ({_MAX_GGUF_HEADER >> 20} MiB)")
                )
            data = fh.read(n)
            if len(data) != n:
                raise bad("the file shrank while being read")
            pos += n
            return data

        def skip(n: int) -> None:
            nonlocal pos
            if n > limit - pos:
                raise bad(f"a value at offset {pos:,} claims {n:,} bytes, more than the file holds")
            fh.seek(n, os.SEEK_CUR)
            pos += n

        def unpack(fmt: str) -> Any:
            return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

        def string(keep: bool = True) -> str | None:
            n = unpack("<Q")
            if not keep or n > _MAX_GGUF_KEEP:
                skip(n)
                return None
            return take(n).decode("utf-8", "replace")

        def value(vtype: int, depth: int = 0) -> Any:
            if vtype in _GGUF_SCALARS:
                return unpack(_GGUF_SCALARS[vtype])
            if vtype == _GGUF_STRING:
                return string()
            if vtype == _GGUF_ARRAY and depth < 2:
                item_type, count = unpack("<I"), unpack("<Q")
                if item_type in _GGUF_SCALARS:
                    skip(count * struct.calcsize(_GGUF_SCALARS[item_type]))
                elif item_type in (_GGUF_STRING, _GGUF_ARRAY):
                    if count > (limit - pos) // 8:
                        raise bad(f"an array at offset {pos:,} claims {count:,} items, more than the file holds")
                    for _ in range(count):
                        string(keep=False) if item_type == _GGUF_STRING else value(item_type, depth + 1)
                else:
                    raise bad(f"an array at offset {pos:,} has an unknown item type {item_type}")
                return _GGUFArray(item_type, count)
            raise bad(f"a metadata value at offset {pos:,} has an unknown type {vtype}")

        if take(4) != b"GGUF":
            raise bad("it does not start with 'GGUF'")
        version = unpack("<I")
        if version not in (2, 3):
            raise bad(f"version {version} is not supported (2 or 3; big-endian files are not)")
        n_tensors, n_kv = unpack("<Q"), unpack("<Q")
        if n_kv > (limit - pos) // 13 or n_tensors > (limit - pos) // 24:
            raise bad(f"it claims {n_kv:,} metadata entries and {n_tensors:,} tensors, more than the file holds")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string() or ""
            metadata[key] = value(unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = string() or "?"
            n_dims = unpack("<I")
            if not 1 <= n_dims <= 4:
                raise bad(f"tensor {_excerpt(name, 60)} has {n_dims} dimensions (1 to 4)")
            dims = [unpack("<Q") for _ in range(n_dims)]
            tensors.append((name, dims, unpack("<I"), unpack("<Q")))
        header_end = pos

    for key, limit_count in _GGUF_COUNT_LIMITS:
        for name, val in metadata.items():
            if name.endswith(key) and _is_int(val) and val > limit_count:
                raise bad(f"{_esc(name, 60)}={val} is implausible (limit {limit_count})")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, _GGUFArray) and tokens.count > _MAX_GGUF_TOKENS:
        raise bad(f"its vocabulary claims {tokens.count:,} tokens (limit {_MAX_GGUF_TOKENS:,})")
    alignment = metadata.get("general.alignment", 32)
    if not _is_int(alignment) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise bad(f"general.alignment={_excerpt(alignment)} is not a power of two")
    data_start = -(-header_end // alignment) * alignment
    if not tensors:
        raise bad("it holds no tensors")
    sizes = getattr(gguf, "GGML_QUANT_SIZES", {})
    spans = []
    elements = 0
    for name, dims, ttype, offset in tensors:
        shown = _excerpt(name, 60)
        try:
            block, type_size = sizes[gguf.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise bad(f"tensor {shown} has an unknown ggml type {ttype}") from None
        if dims[0] % block:
            raise bad(f"tensor {shown} has {dims[0]} columns, not a multiple of its block size {block}")
        numel = math.prod(dims)
        nbytes = numel // block * type_size
        begin = data_start + offset
        if offset % alignment or begin + nbytes > size:
            raise bad(f"tensor {shown} ({nbytes:,} bytes at offset {offset:,}) lies outside the file (truncated?)")
        spans.append((begin, begin + nbytes, shown))
        elements += numel
    spans.sort()
    for (_b0, end0, name0), (begin1, _e1, name1) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise bad(f"tensors {name0} and {name1} overlap")
    if size - max(end for _b, end, _n in spans) > alignment:
        raise bad(f"{size - max(end for _b, end, _n in spans):,} bytes follow its last tensor")
    return elements


# --------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------


def _read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a safetensors file's header by hand; returns {name: (dtype, shape)}.

    The safetensors library is robust, but a clear message naming the file and its size is
    worth a few lines, and a header claiming more data than the file holds is caught here.
    """
    size = _require_regular(path)

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(
            f"{path} ({size} bytes) is not a valid safetensors file: {reason}; "
            "re-export it with safetensors.torch.save_file"
        )

    if size < 8:
        raise bad("shorter than the 8-byte header length")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise bad(f"the header claims {header_len} bytes but only {size - 8} follow (truncated?)")
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise bad(f"the header claims {header_len} bytes (limit {_MAX_SAFETENSORS_HEADER})")
        raw = fh.read(header_len)
    if len(raw) != header_len:
        raise bad("the file shrank while being read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"the header is not JSON ({_describe_exc(exc, with_type=False)})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_len = size - 8 - header_len
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise bad(f"the entry for {_excerpt(name, 60)} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or (dtype not in _ST_ITEMSIZE and dtype not in _ST_SUBBYTE_BITS):
            raise bad(f"tensor {_excerpt(name, 60)} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {_excerpt(name, 60)} has an invalid shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise bad(f"tensor {_excerpt(name, 60)} has invalid data_offsets {_short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise bad(
                f"tensor {_excerpt(name, 60)} lies outside the file (bytes {begin}..{end} of a {data_len}-byte data section; "
                "truncated?)"
            )
        numel = math.prod(shape)
        if dtype in _ST_ITEMSIZE:
            nbytes = numel * _ST_ITEMSIZE[dtype]
        else:
            nbytes = -(-numel * _ST_SUBBYTE_BITS[dtype] // 8)
        if end - begin != nbytes:
            raise bad(f"tensor {_excerpt(name, 60)} ({dtype} {tuple(shape)}) needs {nbytes} bytes but its offsets span {end - begin}")
        spans.append((begin, end, name))
        tensors[name] = (dtype, tuple(shape))
    spans.sort()
    for (_b0, end0, name0), (begin1, _e1, name1) in zip(spans, spans[1:]):
        if begin1 < end0:
            raise bad(f"tensors {_excerpt(name0, 60)} and {_excerpt(name1, 60)} overlap")
    covered = max((end for _b, end, _n in spans), default=0)
    if data_len > covered:  # the safetensors library refuses it too; say so before copying a padded file
        raise bad(f"{data_len - covered:,} bytes follow its last tensor")
    return tensors


def _check_safetensors_index(folder: Path) -> None:
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        return
    index = _read_json(index_path, 32 << 20)  # a 405B model's index is ~100 KB
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path} has no valid 'weight_map' (tensor name -> shard file)")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not (folder / shard).is_file():
            raise CheckpointError(f"{index_path} refers to shard {shard!r}, which is not a file in {folder}")


def _load_safetensors(path: Path) -> dict[str, "torch.Tensor"]:
    _read_safetensors_header(path)
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} ({_size(path)} bytes) does not load as safetensors: {_describe_exc(exc)}") from exc


def _torch_load_weights_only(path: Path) -> dict[str, "torch.Tensor"]:
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


def _state_dict_from(obj: Any, path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    def is_state_dict(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())

    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):  # training checkpoints: Lightning's "state_dict", common "model_state_dict"
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)")


def _check_state_dict_fits(model: "torch.nn.Module", shapes: dict[str, tuple[int, ...]], source: Path, factory: Any) -> None:
    """Strict-load pre-check with a readable report (torch's own error is one long blob).

    ``shapes`` are the file's tensor shapes (for safetensors: from the header, before any tensor is
    read), so a file that does not describe exactly the module built is refused before allocating.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v) for k, v in shapes.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if not (missing or unexpected or mismatched):
        return
    parts = _key_problems(missing, unexpected, [f"{k}: file {got[k]} vs model {expected[k]}" for k in mismatched])
    raise CheckpointError(
        f"{source} does not fit the model built by {factory}: " + "; ".join(parts) + _prefix_hint(set(expected), set(got))
    )


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
        if {k[len(prefix):] for k in keys} == target:
            return prefix
    return None


# --------------------------------------------------------------------------------------
# Files, JSON and code
# --------------------------------------------------------------------------------------


def _check_files(target: _Target) -> None:
    """Every file we would read: inside the checkpoint, a regular file of a plausible size, not a Git LFS pointer."""
    roots = _allowed_roots(target.path) if target.path.is_dir() else None
    for path in target.files:
        size = _require_safe(path, roots).st_size
        if size <= _LFS_POINTER_MAX:
            with open(path, "rb") as fh:
                head = fh.read(len(_LFS_MAGIC))
            if head == _LFS_MAGIC:
                raise CheckpointError(f"{path} is a Git LFS pointer, not weights; run `git lfs pull` (in CI: lfs: true)")


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
                raise CheckpointError(f"{source}: {_esc(key, 60)}={value} is implausible (limit {limit}); is this config corrupt?")


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
                    f"attn_implementation={_excerpt(value, 60)} in {name}, a kernel transformers would download and import"
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


# --------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------


class FileDigests:
    """sha256 of checkpoint files, reused while a file is provably unchanged.

    A digest is remembered under the file's (real path, device, inode, size, mtime, ctime), the
    test git's index uses: rewriting a file changes its ctime, which no unprivileged tool can set
    back. A file modified less than 2 s before it was hashed is not remembered ("racy" in git's
    terms: a coarse file-system clock could give a second write the same timestamps), nor one that
    changed while it was read. Digests live in this process and, with ``path``, in a small JSON file
    in the cache directory, so a warm run does not re-read a multi-gigabyte base checkpoint just to
    find its cached evaluation.
    """

    RACY_NS = 2_000_000_000
    MAX_ENTRIES = 2000
    MAX_FILE_BYTES = 4 * 2**20  # MAX_ENTRIES entries of a few hundred bytes, with room to spare

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, str] = {}
        self._loaded = False
        self._dirty = False

    @staticmethod
    def _key(path: Path, st: os.stat_result) -> str:
        return f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"

    def _load_file(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        # never through a symbolic link, never a FIFO (O_NONBLOCK), only a regular file of ours, bounded
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError:
            return
        try:
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                geteuid = getattr(os, "geteuid", None)
                if not stat.S_ISREG(st.st_mode) or st.st_size > self.MAX_FILE_BYTES or (geteuid is not None and st.st_uid != geteuid()):
                    return
                data = json.loads(fh.read(self.MAX_FILE_BYTES + 1).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return
        if isinstance(data, dict):
            self._memory.update({k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and len(v) == 64})

    def digest(self, path: Path) -> bytes:
        st = _require_regular_stat(path)
        key = self._key(path, st)
        self._load_file()
        known = self._memory.get(key) or _PROCESS_DIGESTS._memory.get(key)
        if known is not None:
            return bytes.fromhex(known)
        h = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with open(path, "rb") as fh:
            while True:
                n = fh.readinto(buffer)
                if not n:
                    break
                h.update(view[:n])
        value = h.digest()
        after = os.stat(path)
        settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.RACY_NS
        if settled and self._key(path, after) == key:
            self._remember(key, value.hex())
        return value

    def _remember(self, key: str, hexdigest: str) -> None:
        _PROCESS_DIGESTS._memory[key] = hexdigest
        if self is _PROCESS_DIGESTS or self.path is None:
            return
        self._memory[key] = hexdigest
        self._dirty = True

    def flush(self) -> None:
        """Write new digests to the store in one atomic replace (once per fingerprint, not per file)."""
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        while len(self._memory) > self.MAX_ENTRIES:
            self._memory.pop(next(iter(self._memory)))
        import contextlib
        import tempfile

        # a temporary file with an unpredictable name, created O_EXCL | O_NOFOLLOW (mkstemp), renamed over
        # the store: a planted symbolic link (at the store or at a guessed temporary name) is replaced,
        # never written through. A concurrent worker's entry lost here is only a later re-hash.
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self._memory))
            os.replace(tmp, self.path)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


#: digests remembered in this process whatever the cache settings (a cold run hashes a checkpoint
#: to look up its cached evaluation and again when it loads it: once is enough)
_PROCESS_DIGESTS = FileDigests(None)


def _fingerprint_files(target: _Target, digests: FileDigests | None = None) -> str:
    """sha256 over (relative name, size, sha256 of the bytes) of every file, in name order."""
    digests = digests or _PROCESS_DIGESTS
    digest = hashlib.sha256(b"pytest-forgetting/files/v2\0")
    base = target.path if target.path.is_dir() else target.path.parent
    for path in sorted(target.files, key=lambda p: p.relative_to(base).as_posix()):
        name = path.relative_to(base).as_posix().encode("utf-8", "surrogateescape")
        size = _require_regular(path)
        digest.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", size) + digests.digest(path))
    digests.flush()
    return "sha256:" + digest.hexdigest()


class _Stage:
    """Private copies of a checkpoint's files: what transformers, peft, gguf and safetensors read.

    Those libraries read the folder they are given themselves, and memory-map weights (safetensors,
    GGUF): a link in the checkpoint folder would lead them outside it, and a weights file rewritten
    in place while mapped kills the whole process with SIGBUS. So every file of the target is first
    validated (``_check_files``: contained, regular, plausible size), then copied once, from one open
    descriptor whose fstat must not change during the copy, into a fresh 0700 temporary folder that
    only this process writes (``$TMPDIR``); the loaders only ever see those copies, and the fingerprint
    is computed from the very bytes copied, so it always describes what was evaluated. A copy costs
    one read and one write of the checkpoint, about what hashing it cost before; reading the weights
    into memory instead would double the peak memory of a large model and cannot serve accelerate's
    disk offload. Mapped copies may be deleted once loaded (Linux keeps an unlinked mapped file
    alive, and nobody else can truncate it); with a device map they live as long as the model.
    """

    def __init__(self, target: _Target) -> None:
        import tempfile

        self.source = target
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="pytest-forgetting-load-"))
        except OSError as exc:
            raise CheckpointError(
                f"cannot create a private copy of the checkpoint in {tempfile.gettempdir()}: {exc.strerror or exc}; "
                "set TMPDIR to a writable folder"
            ) from None
        base = target.path if target.path.is_dir() else target.path.parent
        digest = hashlib.sha256(b"pytest-forgetting/files/v2\0")
        copies = []
        try:
            for path in sorted(target.files, key=lambda p: p.relative_to(base).as_posix()):
                rel = path.relative_to(base).as_posix()
                size, file_digest = _copy_verified(path, self.dir / rel)
                name = rel.encode("utf-8", "surrogateescape")
                digest.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", size) + file_digest)
                copies.append(self.dir / rel)
        except BaseException:
            self.remove()
            raise
        self.fingerprint = "sha256:" + digest.hexdigest()
        path = self.dir if target.path.is_dir() else self.dir / target.path.name
        self.target = _Target(target.kind, path, target.resolved, target.weights, tuple(copies))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def keep_while(self, obj: Any) -> None:
        """Delete the copies when ``obj`` is garbage-collected (or at exit) instead of now."""
        import shutil
        import weakref

        weakref.finalize(obj, shutil.rmtree, str(self.dir), True)

    def unstage(self, exc: CheckpointError) -> CheckpointError:
        """The same error naming the user's files instead of their private copies."""
        message = str(exc)
        origin = self.source.path if self.source.path.is_dir() else self.source.path.parent
        if str(self.dir) not in message:
            return exc
        fixed = CheckpointError(message.replace(str(self.dir), str(origin)))
        fixed.__cause__ = exc.__cause__
        return fixed


def _copy_verified(src: Path, dst: Path) -> tuple[int, bytes]:
    """Copy ``src`` to a new private file, hashing the bytes; refuse it if it changes meanwhile."""
    shown = _esc(str(src))
    try:
        fin = open(src, "rb", buffering=0)
    except OSError as exc:
        raise CheckpointError(f"cannot read {shown}: {exc.strerror or exc}") from None
    with fin:
        before = os.fstat(fin.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise CheckpointError(f"{shown} is not a regular file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        h = hashlib.sha256()
        total = 0
        buffer = bytearray(max(1, min(_COPY_CHUNK, before.st_size + 1)))
        view = memoryview(buffer)
        try:
            fd = os.open(dst, flags, 0o600)
            try:
                while total <= before.st_size:
                    n = fin.readinto(buffer)
                    if not n:
                        break
                    h.update(view[:n])
                    done = 0
                    while done < n:
                        done += os.write(fd, view[done:n])
                    total += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(
                f"cannot copy {shown} to the private folder {dst.parent} before loading it: {exc.strerror or exc}; "
                "set TMPDIR to a folder with enough free space"
            ) from None
        after = os.fstat(fin.fileno())
    if total != before.st_size or _stat_signature(before) != _stat_signature(after):
        raise CheckpointError(
            f"{shown} changed while it was being read ({before.st_size:,} bytes before, {after.st_size:,} after); "
            "run again once nothing writes to the checkpoint"
        )
    return total, h.digest()


def _stat_signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fingerprint_module(model: "torch.nn.Module") -> str:
    import torch

    digest = hashlib.sha256(b"pytest-forgetting/module/v1\0")
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):  # extra_state can be anything
            digest.update(f"{name}\0{type(tensor).__name__}\0".encode())
            continue
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise CheckpointError(f"parameter {name!r} is on the meta device (never materialised); cannot fingerprint it")
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


class _Factory:
    """A resolved --model-factory: calls it and checks it built an nn.Module."""

    def __init__(self, spec: str, fn: Callable[[], Any]) -> None:
        self.spec, self.fn = spec, fn

    def __call__(self) -> "torch.nn.Module":
        import torch

        try:
            model = self.fn()
        except Exception as exc:
            raise CheckpointError(f"--model-factory {self.spec} raised {_describe_exc(exc)}") from exc
        if not isinstance(model, torch.nn.Module):
            raise CheckpointError(f"--model-factory {self.spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def __repr__(self) -> str:
        return self.spec


def _as_factory(factory: str | Callable[[], Any] | None, rootdir: Any) -> _Factory | None:
    if factory is None or isinstance(factory, _Factory):
        return factory
    if isinstance(factory, str):
        return resolve_factory(factory, rootdir)  # type: ignore[return-value]
    if callable(factory):
        return _Factory(getattr(factory, "__qualname__", repr(factory)), factory)
    raise CheckpointError(f"model_factory must be 'module:callable' or a callable, not {type(factory).__name__}")


def _as_module(ref: Any) -> "torch.nn.Module":
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is None or not isinstance(ref, torch.nn.Module):
        raise CheckpointError(
            f"a checkpoint reference is a path, a hub id (org/name) or an nn.Module, not a {type(ref).__name__}"
        )
    return ref


def _label_map(config: Any) -> dict[int, str] | None:
    id2label = getattr(config, "id2label", None)
    return _label_map_from_dict(id2label) if isinstance(id2label, dict) else None


def _label_map_from_dict(id2label: dict[Any, Any]) -> dict[int, str] | None:
    """{int: name}, or None for transformers' placeholder names (LABEL_0, LABEL_1, ...)."""
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if not labels or all(v == f"LABEL_{k}" for k, v in labels.items()):
        return None
    return labels


def _id2label(ckpt: LoadedCheckpoint) -> dict[int, str] | None:
    """Label names to compare: the meaningful map, else the config's placeholder one."""
    if ckpt.label_map is not None:
        return ckpt.label_map
    id2label = getattr(ckpt.config, "id2label", None)
    if isinstance(id2label, dict) and id2label:
        try:
            return {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            return None
    return None


def _dtype_kwarg(transformers: Any) -> str:
    """transformers renamed torch_dtype= to dtype= in 4.56."""
    numbers = [int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]]
    return "dtype" if tuple(numbers) >= (4, 56) else "torch_dtype"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _abspath(path: Path) -> str:
    return os.path.abspath(path)


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(_esc(str(i), 120) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line_text(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _esc(line, limit)


def _esc(text: str, limit: int = 200) -> str:
    """A string that may come from a checkpoint, safe to print: every non-printable character (newline,
    ANSI escape, bidi control) written as repr writes it, and at most ``limit`` characters."""
    out = text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _excerpt(value: Any, limit: int = 24) -> str:
    """A short, escaped excerpt of a value read from a checkpoint (a token, a label, a tensor name)."""
    return _esc(repr(value) if isinstance(value, str) else str(value), limit)


def _describe_exc(exc: BaseException, with_type: bool = True) -> str:
    text = _one_line_text(str(exc))
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _show(ref: Any, quote: bool = True) -> str:
    if isinstance(ref, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(ref))
        return repr(text) if quote else text
    return f"<in-memory {type(ref).__name__}>"
