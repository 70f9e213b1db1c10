"""The seam between loading (``load.py``) and the checkpoint formats: a ``Loader`` and its ``LoadContext``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..factory import Factory
    from ..records import LoadedCheckpoint, Placement, Target

#: what a loader builds: the model, its tokenizer and config (or None), its meaningful label names (or None)
Built = tuple["torch.nn.Module", Any, Any, "dict[int, str] | None"]


@dataclass(frozen=True)
class LoadContext:
    """The options of one load, fixed before anything is read: what ``load_checkpoint`` was asked."""

    rootdir: str | os.PathLike[str] | None = None  # relative references and --model-factory modules
    allow_pickle: bool = False
    allow_download: bool = False
    trust_remote_code: bool = False
    base: LoadedCheckpoint | None = None  # the loaded base checkpoint: a PEFT adapter is merged into a copy
    placement: Placement | None = None  # --forgetting-device-map: accelerate places a Hugging Face model
    factory: Factory | None = None  # --model-factory, resolved once the reference is found (bare weights)


class Loader(Protocol):
    """How one checkpoint format is built, chosen by ``loaders.loader_for`` (the one table of formats)."""

    name: str

    def places(self, target: Target) -> bool:
        """Whether accelerate can load ``target`` straight onto a device map (``ctx.placement``)."""
        ...

    def refuse(self, target: Target, ctx: LoadContext) -> None:
        """Raise ``CheckpointError`` for what this format cannot load, on the user's files, before any copy."""
        ...

    def load(self, target: Target, ctx: LoadContext) -> Built:
        """Build the model from ``target``, a staged target: its files are private, validated copies."""
        ...
