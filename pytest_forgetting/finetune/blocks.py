"""Blocks of parameters by depth, and which of them train.

A block is the module path up to its first numeric part (``encoder.layer.3``, the ``3`` of an
``nn.Sequential``), else its first two parts (``bert.embeddings``, ``classifier``), in definition
order; the last block is the head. ``layer_lr_decay`` and the ``freeze`` / ``gradual_unfreeze``
strategies count blocks from the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

Blocks = list[tuple[str, list[str]]]


def block_of(module_path: str) -> str:
    """The depth block of a module path (see the module docstring)."""
    parts = module_path.split(".") if module_path else []
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:2])


def parameter_blocks(model: nn.Module) -> Blocks:
    """``[(block, [parameter names])]`` from the input side to the head, in definition order."""
    blocks: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        blocks.setdefault(block_of(name.rpartition(".")[0]), []).append(name)
    return list(blocks.items())


def _set_trainable(model: nn.Module, names: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)


def _train_mode(model: nn.Module) -> None:
    """Train mode, except modules whose own parameters are all frozen (their buffers stay put)."""
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def _last_blocks(blocks: Blocks, k: int) -> set[str]:
    return {n for _, names in blocks[max(len(blocks) - k, 0) :] for n in names}
