"""``ewc``: elastic weight consolidation (Kirkpatrick et al. 2017).

The L2-SP penalty weighted by a diagonal Fisher estimated on ``fisher_examples`` examples of
``retain`` (a task whose ``retain_split``, default "train", is used), normalised to mean 1 so that
``penalty`` has the scale of L2-SP's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import _Data, _logits, _to, as_data
from ..spec import float_option, int_option
from .base import StrategyBase, TrainContext
from .l2sp import _Anchor

if TYPE_CHECKING:
    import torch
    from torch import nn


class EWC(StrategyBase):
    name = "ewc"

    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        import torch

        opts = self.options
        weight = float_option("ewc", "penalty", opts.penalty, 0.0)
        retained = as_data(opts.retain, split=opts.retain_split, tokenizer=ctx.tokenizer, what="retain",
                           config=getattr(model, "config", None))  # fmt: skip
        n_fisher = min(int_option("ewc", "fisher_examples", opts.fisher_examples, 1), retained.n)
        idx = np.sort(np.random.default_rng(int(ctx.config.seed) + 1).choice(retained.n, size=n_fisher, replace=False))
        fisher = fisher_diagonal(model, retained, idx, ctx.device)
        mean = float(torch.cat([f.reshape(-1) for f in fisher.values()]).mean())
        if mean > 0:  # normalised: with a uniform Fisher, EWC is L2-SP with the same penalty
            fisher = {n: f / mean for n, f in fisher.items()}
        self._anchor = _Anchor(model, weight, fisher)
        ctx.info.fisher_mean = mean

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self._anchor(model)


def fisher_diagonal(model: nn.Module, data: _Data, indices: np.ndarray, device: Any = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over examples of the squared gradient of -log p(y|x).

    Per-example gradients (one backward pass per example), with the model in eval mode.
    """
    import torch

    device = device if device is not None else next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    for i in indices:
        x, y = data.batch(np.array([i]))
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(_logits(model, _to(x, device)), y.to(device))
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for n in fisher:
        fisher[n] /= max(len(indices), 1)
    return fisher
