"""``gradual_unfreeze``: the head first, then ``blocks_per_epoch`` deeper blocks per epoch (ULMFiT)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..blocks import Blocks, _last_blocks, _set_trainable, _train_mode
from ..spec import int_option
from .base import StrategyBase

if TYPE_CHECKING:
    from torch import nn


class GradualUnfreeze(StrategyBase):
    name = "gradual_unfreeze"
    optimizes_frozen = True  # the deeper blocks are in the optimiser from the start; they train once unfrozen

    def trainable(self, model: nn.Module, blocks: Blocks) -> set[str]:
        int_option("gradual_unfreeze", "blocks_per_epoch", self.options.blocks_per_epoch, 1)
        return _last_blocks(blocks, self.options.blocks_per_epoch)

    def start_epoch(self, model: nn.Module, epoch: int, blocks: Blocks) -> None:
        _set_trainable(model, _last_blocks(blocks, self.options.blocks_per_epoch * (epoch + 1)))
        _train_mode(model)
