"""``l2sp``: ``penalty / 2 * sum ||w - w_base||^2`` added to the loss (L2-SP, Li et al. 2018).

:class:`_Anchor` is the penalty; ``ewc`` weights it by a diagonal Fisher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec import float_option
from .base import StrategyBase, TrainContext

if TYPE_CHECKING:
    import torch
    from torch import nn


class L2SP(StrategyBase):
    name = "l2sp"

    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        self._anchor = _Anchor(model, float_option("l2sp", "penalty", self.options.penalty, 0.0))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self._anchor(model)


class _Anchor:
    """``penalty / 2 * sum(weight * (w - w0)^2)`` over the trainable parameters (L2-SP, EWC)."""

    def __init__(self, model: nn.Module, penalty: float, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.penalty = penalty
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.weights = weights

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = None
        for n, p in model.named_parameters():
            if not p.requires_grad or n not in self.anchor:
                continue
            sq = (p - self.anchor[n]) ** 2
            if self.weights is not None:
                sq = sq * self.weights[n]
            term = sq.sum()
            total = term if total is None else total + term
        if total is None:
            import torch

            return torch.zeros(())
        return 0.5 * self.penalty * total
