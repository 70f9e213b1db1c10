"""``adalora``: adaptive low-rank adapters (AdaLoRA, Zhang et al. 2023) through ``peft``.

Every target module starts at rank ``init_r`` and the rank budget is pruned to an average of
``target_r`` by SVD-importance between step ``tinit`` and ``total - tfinal`` (every ``delta_t``
steps; defaults 10 % and 20 % of the planned steps), with ``beta1`` / ``beta2`` smoothing the
importance and ``orth_reg_weight`` the orthogonality penalty on the singular vectors; ``alpha``,
``dropout``, ``target_modules`` and ``modules_to_save`` as for ``lora``. Saved as a PEFT adapter
folder, like ``lora``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from ..blocks import Blocks
from ..spec import FinetuneError, float_option, int_option
from .base import StrategyBase, TrainContext

if TYPE_CHECKING:
    import torch
    from torch import nn


class AdaLora(StrategyBase):
    name = "adalora"

    def wrap(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        # the rank schedule needs the planned number of steps
        cfg = ctx.config
        per_epoch = math.ceil(ctx.n_train / cfg.batch_size)
        if cfg.epochs is not None:
            epochs = cfg.epochs
        else:
            epochs = math.ceil(cfg.max_steps / per_epoch) if cfg.max_steps is not None else 1
        planned = epochs * per_epoch
        total = planned if cfg.max_steps is None else min(cfg.max_steps, planned)
        return _adalora(model, self.options, total).to(ctx.device)

    def trainable(self, model: nn.Module, blocks: Blocks) -> None:
        return None  # peft froze the base weights: only the adapters (and modules_to_save) train

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.options.orth_reg_weight:
            return None
        orth = _orthogonality(model)
        return None if orth is None else float(self.options.orth_reg_weight) * orth

    def after_step(self, model: nn.Module, step: int) -> None:
        # importance from this step's gradients, then the budget is re-allocated
        peft_model: Any = model  # the PeftModel of wrap()
        peft_model.base_model.update_and_allocate(step)

    def end_training(self, model: nn.Module, flags: dict[str, bool]) -> None:
        return None  # a PeftModel keeps its own flags (only the adapters train)


def _adalora(model: nn.Module, opts: Any, total_steps: int) -> Any:
    """Wrap ``model`` in a PeftModel with AdaLoRA adapters; the rank schedule spans ``total_steps``."""
    import torch

    try:
        import peft
    except ImportError:
        raise FinetuneError(
            "strategy 'adalora' needs the peft package: pip install peft (or pytest-forgetting[lora])"
        ) from None
    init_r = int_option("adalora", "init_r", opts.init_r, 1)
    target_r = int_option("adalora", "target_r", opts.target_r, 1)
    if target_r > init_r:
        raise FinetuneError(
            f"strategy 'adalora': target_r={target_r} must not exceed init_r={init_r} (the budget only shrinks)"
        )
    alpha = init_r if opts.alpha is None else float_option("adalora", "alpha", opts.alpha, 0.0, open_low=True)
    dropout = float_option("adalora", "dropout", opts.dropout, 0.0, 1.0)
    total = max(1, int(total_steps))
    tinit = int(0.1 * total) if opts.tinit is None else int_option("adalora", "tinit", opts.tinit, 0)
    tfinal = int(0.2 * total) if opts.tfinal is None else int_option("adalora", "tfinal", opts.tfinal, 0)
    if tinit >= total - tfinal:
        raise FinetuneError(
            f"strategy 'adalora': tinit={tinit} + tfinal={tfinal} leave no budgeting phase "
            f"in the {total} planned steps; "
            "lower them or train longer"
        )
    targets = opts.target_modules
    task_type = None
    config = getattr(model, "config", None)
    if targets is None:
        if config is not None and getattr(config, "model_type", None):
            from peft.utils import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING as known

            if config.model_type not in known:
                raise FinetuneError(
                    f"strategy 'adalora': no default target modules for model type {config.model_type!r}; "
                    "pass target_modules=[...]"
                )
            if type(model).__name__.endswith("ForSequenceClassification"):
                task_type = "SEQ_CLS"  # peft then trains the classification head in full
        else:  # AdaLoRA adapts Linear layers (not convolutions)
            names = [n for n, m in model.named_modules() if n and isinstance(m, torch.nn.Linear)]
            if not names:
                raise FinetuneError("strategy 'adalora': the model has no Linear layers; pass target_modules=[...]")
            targets = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    try:
        adalora_config = peft.AdaLoraConfig(
            init_r=init_r, target_r=target_r, lora_dropout=dropout, target_modules=targets,
            lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int, takes a float
            modules_to_save=opts.modules_to_save, task_type=task_type, tinit=tinit, tfinal=tfinal,
            deltaT=int_option("adalora", "delta_t", opts.delta_t, 1),
            beta1=float_option("adalora", "beta1", opts.beta1, 0.0, 1.0),
            beta2=float_option("adalora", "beta2", opts.beta2, 0.0, 1.0),
            orth_reg_weight=float_option("adalora", "orth_reg_weight", opts.orth_reg_weight, 0.0), total_step=total,
        )  # fmt: skip
        return peft.get_peft_model(model, adalora_config)
    except (ValueError, TypeError, KeyError) as exc:
        raise FinetuneError(
            f"strategy 'adalora': peft could not add adapters ({exc}); pass target_modules=[...]"
        ) from None


def _orthogonality(model: Any) -> Any:
    """AdaLoRA's regulariser: mean over adapters of ||P P^T - I||_F for the left (A) and right (B)
    singular-vector matrices, which keeps the factorisation an SVD (Zhang et al. 2023, eq. 4)."""
    import torch

    terms = []
    for name, p in model.named_parameters():
        if not p.requires_grad or not (".lora_A." in name or ".lora_B." in name):
            continue
        cov = p @ p.T if ".lora_A." in name else p.T @ p
        eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
        terms.append(torch.linalg.matrix_norm(cov - eye))
    return torch.stack(terms).mean() if terms else None
