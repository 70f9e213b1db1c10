"""``replay``: a ``fraction`` of every batch is drawn from ``retain`` (rehearsal).

The retained examples come in seeded random passes over ``retain``'s ``retain_split`` (default
"train"), independent of the order of the new data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import _concat, as_data
from ..spec import FinetuneError, float_option
from .base import StrategyBase, TrainContext

if TYPE_CHECKING:
    from torch import nn


class Replay(StrategyBase):
    name = "replay"

    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        import torch

        opts, batch_size = self.options, ctx.config.batch_size
        fraction = float_option("replay", "fraction", opts.fraction, 0.0, 1.0, open_low=True)
        if fraction >= 1.0:
            raise FinetuneError("strategy 'replay': fraction must be below 1 (some of each batch must be new data)")
        self._data = as_data(opts.retain, split=opts.retain_split, tokenizer=ctx.tokenizer, what="retain",
                             config=getattr(model, "config", None))  # fmt: skip
        self._n = min(max(1, int(round(fraction * batch_size))), batch_size - 1)
        if batch_size < 2:
            raise FinetuneError("strategy 'replay' needs batch_size >= 2 (new and replayed examples share each batch)")
        self._gen = torch.Generator().manual_seed(int(ctx.config.seed) + 2)
        self._order: list[int] = []
        self._info = ctx.info

    def replayed_per_batch(self) -> int:
        return self._n

    def extend_batch(self, x: Any, y: Any) -> tuple[Any, Any]:
        import torch

        while len(self._order) < self._n:
            self._order.extend(torch.randperm(self._data.n, generator=self._gen).tolist())
        ridx, self._order = np.array(self._order[: self._n]), self._order[self._n :]
        xr, yr = self._data.batch(ridx)
        x, y = _concat(x, xr), torch.cat([y, yr])
        self._info.replayed_examples += len(ridx)
        return x, y
