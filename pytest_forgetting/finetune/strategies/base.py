"""The ``Strategy`` protocol: what a fine-tuning strategy decides, hook by hook, and the defaults.

The training loop (``finetune/loop.py``) and the call (``finetune/run.py``) know no strategy by
name; they ask the strategy object, in this order:

1. ``validate(session)``: checks that need nothing trained yet (``wise_ft``'s alpha and keep).
2. ``pretrained(device)``: a module to use instead of training (``wise_ft(tuned=...)``), else None.
3. ``wrap(model, ctx)``: the module to train (``lora`` / ``adalora`` wrap it in a PeftModel).
4. ``trainable(model, blocks)``: the names of the parameters that train at the start, or None
   to keep the module's own flags (a PeftModel's).
5. ``setup(model, ctx)``: penalty anchors, Fisher estimates, retained data.
6. ``optimizes_frozen``: whether parameters frozen at the start still get an optimiser slot
   (they are unfrozen later).
7. per epoch ``start_epoch(model, epoch, blocks)``; per batch ``extend_batch(x, y)`` (replayed
   examples), ``penalty(model)`` (added to the loss), ``after_step(model, step)``.
8. ``end_training(model, flags)``: after the last step (default: the caller's ``requires_grad``
   flags back).
9. ``finish(start, tuned, ctx)``: the returned module (``wise_ft`` interpolates).

A new strategy is one module of this package with a subclass of :class:`StrategyBase`, an options
dataclass in ``finetune/spec.py`` and one line in the table of ``strategies/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..blocks import Blocks
from ..info import FinetuneInfo
from ..spec import TrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class TrainContext:
    """What a strategy may read while the training is set up."""

    config: TrainConfig
    n_train: int  # examples trained on (the training split less an early-stopping hold-out)
    tokenizer: Any
    device: Any
    info: FinetuneInfo


@dataclass(frozen=True)
class FinishContext:
    """What a strategy may read when it makes the returned module from the trained one."""

    model: Any  # the caller's module (never changed)
    train: Any  # the caller's train= argument
    session: Any
    progress: Callable[[str], None] | None
    dtype: Any  # the caller's module's dtype
    info: FinetuneInfo


class Strategy(Protocol):
    """A fine-tuning strategy, as the loop sees it (see the module docstring for the order of the hooks)."""

    name: ClassVar[str]
    optimizes_frozen: ClassVar[bool]
    options: Any

    def validate(self, session: Any) -> None: ...

    def pretrained(self, device: Any) -> nn.Module | None: ...

    def wrap(self, model: nn.Module, ctx: TrainContext) -> nn.Module: ...

    def trainable(self, model: nn.Module, blocks: Blocks) -> set[str] | None: ...

    def setup(self, model: nn.Module, ctx: TrainContext) -> None: ...

    def start_epoch(self, model: nn.Module, epoch: int, blocks: Blocks) -> None: ...

    def replayed_per_batch(self) -> int: ...

    def extend_batch(self, x: Any, y: Any) -> tuple[Any, Any]: ...

    def penalty(self, model: nn.Module) -> torch.Tensor | None: ...

    def after_step(self, model: nn.Module, step: int) -> None: ...

    def end_training(self, model: nn.Module, flags: dict[str, bool]) -> None: ...

    def finish(self, start: nn.Module, tuned: nn.Module, ctx: FinishContext) -> nn.Module: ...


class StrategyBase:
    """The defaults: every parameter trains, no penalty, no replay, nothing per epoch, the trained module returned."""

    name: ClassVar[str] = ""
    optimizes_frozen: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        self.options = options

    def validate(self, session: Any) -> None:
        return None

    def pretrained(self, device: Any) -> nn.Module | None:
        return None

    def wrap(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return model

    def trainable(self, model: nn.Module, blocks: Blocks) -> set[str] | None:
        return {n for n, _ in model.named_parameters()}

    def setup(self, model: nn.Module, ctx: TrainContext) -> None:
        return None

    def start_epoch(self, model: nn.Module, epoch: int, blocks: Blocks) -> None:
        return None

    def replayed_per_batch(self) -> int:
        return 0

    def extend_batch(self, x: Any, y: Any) -> tuple[Any, Any]:
        return x, y

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        return None

    def end_training(self, model: nn.Module, flags: dict[str, bool]) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))

    def finish(self, start: nn.Module, tuned: nn.Module, ctx: FinishContext) -> nn.Module:
        return tuned
