"""``lora``: low-rank adapters through ``peft`` (``r``, ``alpha``, ``dropout``, ``target_modules``,
``modules_to_save``); the returned module is a ``PeftModel`` whose base weights equal the starting
weights, saved as a PEFT adapter folder."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..blocks import Blocks
from ..spec import FinetuneError, float_option, int_option
from .base import StrategyBase, TrainContext

if TYPE_CHECKING:
    from torch import nn


class Lora(StrategyBase):
    name = "lora"

    def wrap(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return _lora(model, self.options).to(ctx.device)

    def trainable(self, model: nn.Module, blocks: Blocks) -> None:
        return None  # peft froze the base weights: only the adapters (and modules_to_save) train

    def end_training(self, model: nn.Module, flags: dict[str, bool]) -> None:
        return None  # a PeftModel keeps its own flags (only the adapters train)


def _lora(model: nn.Module, opts: Any) -> Any:
    """Wrap ``model`` in a PeftModel with LoRA adapters (the model's own weights are frozen)."""
    import torch

    try:
        import peft
    except ImportError:
        raise FinetuneError(
            "strategy 'lora' needs the peft package: pip install peft (or pytest-forgetting[lora])"
        ) from None
    r = int_option("lora", "r", opts.r, 1)
    alpha = r if opts.alpha is None else float_option("lora", "alpha", opts.alpha, 0.0, open_low=True)
    dropout = float_option("lora", "dropout", opts.dropout, 0.0, 1.0)
    targets = opts.target_modules
    task_type = None
    config = getattr(model, "config", None)
    if targets is None:
        if config is not None and getattr(config, "model_type", None):
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

            targets = None if config.model_type in known else "all-linear"
            if type(model).__name__.endswith("ForSequenceClassification"):
                task_type = "SEQ_CLS"  # peft then trains the classification head in full
        else:
            kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
            names = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
            if not names:
                raise FinetuneError("strategy 'lora': the model has no Linear/Conv layers; pass target_modules=[...]")
            targets = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    lora_config = peft.LoraConfig(
        r=r, lora_dropout=dropout, target_modules=targets,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int, takes a float
        modules_to_save=opts.modules_to_save, task_type=task_type,
    )  # fmt: skip
    try:
        return peft.get_peft_model(model, lora_config)
    except (ValueError, TypeError, KeyError) as exc:
        raise FinetuneError(
            f"strategy 'lora': peft could not add adapters ({exc}); pass target_modules=[...]"
        ) from None
