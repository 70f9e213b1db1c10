"""The training loop of ``finetune``: hold-out split, optimiser, schedule, steps, early stopping.

It knows no strategy by name: what trains, the penalty, the replayed examples and what happens
per epoch and at the end come from the ``Strategy`` object (``finetune/strategies/base.py``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .blocks import Blocks, _set_trainable, _train_mode, parameter_blocks
from .data import _Data, _logits, _to
from .info import FinetuneInfo
from .progress import _Progress
from .spec import FinetuneError, TrainConfig
from .strategies.base import Strategy, TrainContext
from .watch import _Watch

if TYPE_CHECKING:
    import torch
    from torch import nn


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _split(data: _Data, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, held-out validation indices)``: a seeded hold-out when early stopping is on."""
    gen = np.random.default_rng(seed)
    train_idx = np.arange(data.n)
    val_idx = np.array([], dtype=np.int64)
    early = config.early
    if early is not None:
        if not 0 < early.val_fraction < 1:
            raise FinetuneError(f"early_stopping: val_fraction={early.val_fraction!r} must be in (0, 1)")
        perm = gen.permutation(data.n)
        n_val = max(1, int(round(early.val_fraction * data.n)))
        if n_val >= data.n:
            raise FinetuneError(
                f"early_stopping: {data.name} has {data.n} examples, too few to hold out a validation set"
            )
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return train_idx, val_idx


def _optimizer(model: nn.Module, blocks: Blocks, strategy: Strategy, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with one parameter group per (depth, decayed) pair; ``layer_lr_decay`` scales by depth."""
    import torch

    lr, decay_rate = config.lr, config.layer_lr_decay
    depth = {n: len(blocks) - 1 - i for i, (_, names) in enumerate(blocks) for n in names}
    groups: dict[tuple[int, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if not strategy.optimizes_frozen and not p.requires_grad:
            continue
        d = depth[name] if decay_rate is not None else 0
        groups.setdefault((d, p.ndim >= 2), []).append(p)
    if not groups:
        raise FinetuneError(f"strategy {strategy.name!r}: no parameter trains")
    param_groups = [
        {
            "params": ps,
            "lr": lr * (decay_rate**d if decay_rate is not None else 1.0),
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (d, decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    return torch.optim.SGD(param_groups, lr=lr, momentum=0.9)


def train(
    model: nn.Module,
    data: _Data,
    strategy: Strategy,
    config: TrainConfig,
    *,
    tokenizer: Any,
    device: torch.device,
    info: FinetuneInfo,
    reporter: _Progress,
    started: float,
) -> nn.Module:
    """Train ``model`` (a copy of the caller's, in float32 on ``device``) with ``strategy``; the trained module."""
    import torch

    seed, batch_size, early, max_steps = int(config.seed), config.batch_size, config.early, config.max_steps
    train_idx, val_idx = _split(data, config, seed)

    # -- strategy set-up ----------------------------------------------------------------------
    ctx = TrainContext(config=config, n_train=len(train_idx), tokenizer=tokenizer, device=device, info=info)
    model = strategy.wrap(model, ctx)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    blocks = parameter_blocks(model)
    trainable = strategy.trainable(model, blocks)
    if trainable is not None:
        _set_trainable(model, trainable)
    strategy.setup(model, ctx)
    n_new = batch_size - strategy.replayed_per_batch()

    # -- optimiser and schedule ----------------------------------------------------------------
    opt = _optimizer(model, blocks, strategy, config)
    steps_per_epoch = math.ceil(len(train_idx) / n_new)
    if config.epochs is not None:
        n_epochs = config.epochs
    else:
        n_epochs = math.ceil(max_steps / steps_per_epoch) if max_steps is not None else 1
    total = n_epochs * steps_per_epoch if max_steps is None else min(max_steps, n_epochs * steps_per_epoch)
    info.planned_steps = total
    warmup = config.warmup
    n_warm = int(warmup) if isinstance(warmup, (int, np.integer)) else int(round(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, n_warm, config.lr_schedule))

    # -- early stopping ------------------------------------------------------------------------
    watch: _Watch | None = None
    if early is not None:
        watch = _Watch(early, model, data, val_idx, tokenizer, device, seed, info)

    order_gen = torch.Generator().manual_seed(seed)
    step = 0
    stopped = ""
    params = dict(model.named_parameters())
    _train_mode(model)
    for epoch in range(n_epochs):
        strategy.start_epoch(model, epoch, blocks)
        live = sum(1 for _, names in blocks if any(params[n].requires_grad for n in names))
        info.trainable_blocks_per_epoch.append(live)
        info.epochs = epoch + 1
        perm = torch.randperm(len(train_idx), generator=order_gen).numpy()
        for lo in range(0, len(train_idx), n_new):
            idx = train_idx[perm[lo : lo + n_new]]
            x, y = data.batch(idx)
            info.new_examples += len(idx)
            x, y = strategy.extend_batch(x, y)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(_logits(model, _to(x, device)), y.to(device))
            term = strategy.penalty(model)
            if term is not None:
                loss = loss + term
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
            opt.step()
            strategy.after_step(model, step)
            current_lr = opt.param_groups[-1]["lr"]
            sched.step()
            step += 1
            value = float(loss.detach())
            info.losses.append(value)
            info.steps = step
            reporter.step(step, total, epoch, value, current_lr)
            if not math.isfinite(value):
                stopped = "non-finite loss"
            elif step >= total:
                stopped = "max_steps" if max_steps is not None and step == max_steps else "epochs"
            elif config.time_budget_s is not None and time.perf_counter() - started >= config.time_budget_s:
                stopped = "time_budget"
            elif watch is not None and early is not None and early.every and step % early.every == 0:
                stopped = watch.check(model, step)
                _train_mode(model)
            if stopped:
                break
        if not stopped and watch is not None and early is not None and not early.every:
            stopped = watch.check(model, step)
            _train_mode(model)
        if stopped:
            break
    info.stopped = stopped or "epochs"
    if watch is not None:
        if info.stopped not in ("early_stopping", "retain_drop"):
            watch.check(model, step, final=True)
        watch.restore(model)
    info.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    strategy.end_training(model, requires_grad)
    return model
