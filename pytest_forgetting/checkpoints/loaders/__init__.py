"""One module per checkpoint format behind the :class:`~.protocol.Loader` protocol.

``loader_for`` is the one place a checkpoint picks its code; ``LOADERS`` the one table of formats:

* ``hf``: a Hugging Face model folder or hub snapshot (config.json + safetensors, or pickled
  ``pytorch_model*.bin`` when allowed) -> ``hf.py``;
* ``peft``: a PEFT adapter folder, merged into a copy of the base -> ``peft.py``;
* ``gguf``: a GGUF file (or a folder holding one) -> ``gguf.py``;
* ``state_dict``: bare weights (a ``.safetensors`` or allowed pickle file) loaded into the module
  ``--model-factory`` builds -> ``state_dict.py``.
"""

from __future__ import annotations

from ..records import Target
from .gguf import GGUFLoader
from .hf import HFLoader
from .peft import PeftLoader
from .protocol import Built, LoadContext, Loader
from .state_dict import StateDictLoader

__all__ = ["LOADERS", "Built", "LoadContext", "Loader", "loader_for", "loader_kind"]

LOADERS: dict[str, Loader] = {
    "hf": HFLoader(),
    "peft": PeftLoader(),
    "gguf": GGUFLoader(),
    "state_dict": StateDictLoader(),
}


def loader_kind(target: Target) -> str:
    """The ``LOADERS`` key of a described target (checkpoint kind, weight format, config.json)."""
    if target.kind == "peft-adapter":
        return "peft"
    if target.weights == "gguf":
        return "gguf"
    if target.path.is_dir() and (target.path / "config.json").is_file():  # hf-folder, hub, pickled HF folder
        return "hf"
    return "state_dict"  # a bare weights file (or a folder holding just one): the factory builds the module


def loader_for(target: Target) -> Loader:
    return LOADERS[loader_kind(target)]
