"""What a checkpoint reference points at (``Target``) and what loading it returns (``LoadedCheckpoint``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


KINDS = ("hf-folder", "peft-adapter", "safetensors", "gguf", "hub", "module", "pickle")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

Ref = Union[str, "os.PathLike[str]", "torch.nn.Module"]


@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded for evaluation.

    ``model`` is in eval mode, on the CPU, in the default dtype; the caller moves it.
    """

    model: torch.nn.Module = field(repr=False)
    ref: str  # as the user gave it
    resolved: str  # absolute path, hub id, or "<in-memory ClassName>"
    kind: str  # one of KINDS
    fingerprint: str  # "sha256:<hex>"
    tokenizer: object | None = field(default=None, repr=False)
    config: object | None = field(default=None, repr=False)
    label_map: dict[int, str] | None = None  # config.id2label when the names mean something


@dataclass(frozen=True)
class Placement:
    """How accelerate splits a Hugging Face model over devices (``from_pretrained(device_map=...)``)."""

    device_map: str | dict[str, int | str]
    max_memory: dict[int | str, int | str] | None = None
    offload_folder: str | os.PathLike[str] | None = None
    dtype: Any = None


@dataclass(frozen=True)
class Target:
    """Where a reference points and what its fingerprint covers; nothing loaded yet."""

    kind: str
    path: Path  # the file or folder to load (for a hub id: its snapshot folder)
    resolved: str
    weights: str  # how the weights are stored: "safetensors" | "pickle" | "gguf"
    files: tuple[Path, ...]  # hashed into the fingerprint
