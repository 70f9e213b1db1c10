"""``finetune(model, train, strategy=..., ...)``: one deterministic fine-tune of a copy of ``model``.

The call checks its arguments, builds the strategy object and the ``TrainConfig``, trains a copy
in float32 under a forked, seeded RNG (``loop.train``), lets the strategy make the returned module
(``finish``), and attaches ``finetune_info`` and the tokenizer.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..tasks.base import attach_tokenizer, tokenizer_of
from .data import as_data
from .info import FinetuneInfo
from .loop import train as _train
from .progress import _Progress, deterministic
from .saving import save_model
from .spec import EarlyStopping, FinetuneError, TrainConfig, check_common, check_options
from .strategies import make_strategy
from .strategies.base import FinishContext

if TYPE_CHECKING:
    from torch import nn


def finetune(
    model: nn.Module,
    train: Any,
    *,
    strategy: str = "full",
    lr: float = 1e-3,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    lr_schedule: str = "constant",
    warmup: int | float = 0,
    max_grad_norm: float | None = None,
    layer_lr_decay: float | None = None,
    early_stopping: Any = None,
    time_budget_s: float | None = None,
    save_to: str | os.PathLike[str] | None = None,
    split: str = "train",
    device: Any = None,
    tokenizer: Any = None,
    session: Any = None,
    progress: Callable[[str], None] | None = None,
    log_every: int | None = None,
    **options: Any,
) -> nn.Module:
    """Fine-tune a copy of ``model`` on ``train`` and return it (``model`` itself is never changed).

    ``epochs`` passes over the training split (default 1), or ``max_steps`` optimiser steps, or
    whichever ends first when both are given; ``time_budget_s`` stops earlier (and then the result
    depends on the machine's speed). ``warmup`` is a number of steps or a fraction of them.
    Strategy options go in ``**options`` (see ``STRATEGY_OPTIONS``). ``session`` is a
    ForgettingSession, needed by ``wise_ft(alpha="auto")``; the ``finetune`` fixture passes its own.
    The returned module is in eval mode, on ``device`` (default: the model's), in the model's
    dtype, and carries ``finetune_info`` (a FinetuneInfo).
    """
    import torch

    if model is None or not isinstance(model, torch.nn.Module):
        raise FinetuneError(
            f"model must be an nn.Module (the base checkpoint's, with the fixture), not {type(model).__name__}"
        )
    if getattr(model, "hf_device_map", None):  # copies of it are moved with .to(), which accelerate refuses
        raise FinetuneError(
            "the model is split over devices by accelerate (hf_device_map, e.g. from --forgetting-device-map); "
            "finetune trains a copy on one device: load the model without a device map to fine-tune it"
        )
    opts = check_options(strategy, options)
    check_common(lr, epochs, max_steps, batch_size, weight_decay, lr_schedule, warmup, optimizer, time_budget_s,
                 layer_lr_decay, max_grad_norm)  # fmt: skip
    plan = make_strategy(strategy, opts)
    plan.validate(session)
    config = TrainConfig(
        lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, seed=seed, weight_decay=weight_decay,
        optimizer=optimizer, lr_schedule=lr_schedule, warmup=warmup, max_grad_norm=max_grad_norm,
        layer_lr_decay=layer_lr_decay, early=EarlyStopping.coerce(early_stopping), time_budget_s=time_budget_s,
    )  # fmt: skip

    first = next(iter(model.parameters()), None)
    if first is None:
        raise FinetuneError("the model has no parameters to fine-tune")
    dev = torch.device(device) if device is not None else first.device
    orig_dtype = first.dtype if first.is_floating_point() else torch.float32
    if tokenizer is None:  # the checkpoint's own, when the plugin loaded (or fine-tuned) the model
        tokenizer = tokenizer_of(model)
    data = as_data(train, split=split, tokenizer=tokenizer, config=getattr(model, "config", None))
    if data.n == 0:
        raise FinetuneError(f"train: {data.name} has no examples")
    label = f"finetune[{strategy}]"
    reporter = _Progress(progress, label, log_every)
    info = FinetuneInfo(strategy=strategy, options={f.name: _describe(getattr(plan.options, f.name))
                                                    for f in dataclasses.fields(plan.options)})  # fmt: skip
    start_time = time.perf_counter()

    with deterministic(int(seed), dev):
        start = copy.deepcopy(model).to(device=dev, dtype=torch.float32)
        start.eval()
        tuned = plan.pretrained(dev)
        if tuned is None:
            work = copy.deepcopy(start)
            tuned = _train(work, data, plan, config, tokenizer=tokenizer, device=dev, info=info, reporter=reporter,
                           started=start_time)  # fmt: skip
        tuned.eval()
        result = plan.finish(start, tuned, FinishContext(model=model, train=train, session=session, progress=progress,
                                                         dtype=orig_dtype, info=info))  # fmt: skip
    result.to(dtype=orig_dtype).eval()
    info.seconds = time.perf_counter() - start_time
    info.total_params = sum(p.numel() for p in result.parameters())
    reporter.done(info)
    if save_to is not None:
        info.saved_to = save_model(result, save_to, tokenizer=tokenizer)
    setattr(result, "finetune_info", info)  # noqa: B010 (nn.Module.__setattr__, as an attribute assignment)
    attach_tokenizer(result, tokenizer)  # the result is evaluated (and fine-tuned again) like its checkpoint
    return result


def _describe(value: Any) -> Any:
    """An option as plain data for ``finetune_info`` (tasks, datasets and modules by name)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    plain = (str, int, float, bool, dict)
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, plain) for v in value):
        return list(value)
    name = getattr(value, "name", None)
    return f"<{type(value).__name__} {name}>" if isinstance(name, str) else f"<{type(value).__name__}>"
