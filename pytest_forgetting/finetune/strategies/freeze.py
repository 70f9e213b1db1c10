"""``freeze``: only the last ``train_last`` blocks train (default 1, the head), or everything but the
parameters matching the ``freeze=[...]`` name patterns (fnmatch)."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from ..blocks import Blocks, _last_blocks
from ..spec import FinetuneError, int_option
from .base import StrategyBase

if TYPE_CHECKING:
    from torch import nn


class Freeze(StrategyBase):
    name = "freeze"

    def trainable(self, model: nn.Module, blocks: Blocks) -> set[str]:
        return _freeze_names(model, blocks, self.options)


def _freeze_names(model: nn.Module, blocks: Blocks, opts: Any) -> set[str]:
    """Names of the parameters that train under ``freeze``."""
    patterns, last = opts.freeze, opts.train_last
    if patterns is not None and last is not None:
        raise FinetuneError("strategy 'freeze': give train_last=k or freeze=[patterns], not both")
    all_names = [n for n, _ in model.named_parameters()]
    if patterns is not None:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        frozen = {n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
        if unmatched:
            raise FinetuneError(
                f"strategy 'freeze': pattern(s) {unmatched} match no parameter; "
                f"names look like {', '.join(all_names[:4])}"
            )
        trainable = set(all_names) - frozen
    else:
        k = 1 if last is None else int_option("freeze", "train_last", last, 1)
        trainable = _last_blocks(blocks, k)
    if not trainable:
        raise FinetuneError("strategy 'freeze': every parameter is frozen; nothing would train")
    return trainable
