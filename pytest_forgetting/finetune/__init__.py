"""The fine-tuning runner behind the ``finetune`` fixture: short, deterministic, forgetting-aware.

``finetune(model, train, strategy=..., ...)`` fine-tunes a *copy* of ``model`` on a
classification task (a registered task name, a Task object, a torch Dataset of ``(x, y)``
or an ``(x, y)`` pair) and returns the tuned ``nn.Module``. The same arguments give
bit-identical weights on CPU: data order, dropout and adapter initialisation come from
``seed`` inside a forked RNG, deterministic kernels are on for the call, and the caller's
global state (RNG, determinism flags) is restored afterwards.

Strategies (each a known remedy against catastrophic forgetting, plus the naive baseline), each
defined in one module of ``finetune/strategies/`` with its options in ``finetune/spec.py``:

- ``full``: every parameter trains.
- ``freeze``: only the last ``train_last`` blocks train (default 1, the head), or everything
  but the parameters matching the ``freeze=[...]`` name patterns (fnmatch).
- ``gradual_unfreeze``: the head first, then ``blocks_per_epoch`` deeper blocks per epoch.
- ``lora``: low-rank adapters through ``peft`` (``r``, ``alpha``, ``dropout``,
  ``target_modules``, ``modules_to_save``); the returned module is a ``PeftModel`` whose base
  weights equal the starting weights.
- ``adalora``: adaptive low-rank adapters (AdaLoRA, Zhang et al. 2023) through ``peft``: every
  target module starts at rank ``init_r`` and the rank budget is pruned to an average of
  ``target_r`` (see ``strategies/adalora.py``). Saved as a PEFT adapter folder, like ``lora``.
- ``l2sp``: ``penalty / 2 * sum ||w - w_base||^2`` added to the loss.
- ``ewc``: the same with a diagonal Fisher estimated on ``retain`` (a task whose
  ``retain_split``, default "train", is used), normalised to mean 1 so that ``penalty`` has the
  scale of L2-SP's.
- ``replay``: a ``fraction`` of every batch is drawn from ``retain``.
- ``wise_ft``: a ``full`` fine-tune, then the weights ``(1 - alpha) * base + alpha * tuned``;
  ``alpha="auto"`` picks the largest alpha of the grid ``alphas`` whose model still meets every
  check in ``keep=[{"task": ..., "max_drop": ...}, {"task": ..., "min_gain": ...}]`` (decided
  by the forgetting session's statistics) and attaches the curve as ``model.wise_ft_curve``.

Blocks are groups of parameters by depth (``finetune/blocks.py``); ``layer_lr_decay=d`` gives
block ``k`` from the top the learning rate ``lr * d**k`` (discriminative learning rates) with any
strategy.

The package (its modules load on first use of a name, so ``finetune.spec`` stays light):

- ``spec.py``: strategy names, option dataclasses, ``TrainConfig``, ``EarlyStopping``, checks (no torch)
- ``strategies/``: one module per strategy behind the ``Strategy`` protocol (``strategies/base.py``)
- ``run.py``: ``finetune()``; ``loop.py``: the training loop; ``data.py``: training sources
- ``blocks.py``, ``watch.py`` (early stopping), ``progress.py`` (determinism, progress lines),
  ``saving.py`` (``save_to=``), ``info.py`` (``FinetuneInfo``), ``finetuner.py`` (the fixture's object)
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> "submodule:attribute" (also the private names tests and older code import from here)
_EXPORTS = {
    # spec
    "STRATEGIES": "spec", "STRATEGY_OPTIONS": "spec", "OPTIONS": "spec", "NEEDS_RETAIN": "spec", "SCHEDULES": "spec",
    "OPTIMIZERS": "spec", "DEFAULT_ALPHAS": "spec", "REQUIRED": "spec", "_REQUIRED": "spec:REQUIRED",
    "FinetuneError": "spec", "EarlyStopping": "spec", "TrainConfig": "spec",
    "check_options": "spec", "_check_options": "spec:check_options",
    "check_common": "spec", "_check_common": "spec:check_common",
    "_int_option": "spec:int_option", "_float_option": "spec:float_option",
    "FullOptions": "spec", "FreezeOptions": "spec", "GradualUnfreezeOptions": "spec", "LoraOptions": "spec",
    "AdaLoraOptions": "spec", "L2SPOptions": "spec", "EWCOptions": "spec", "ReplayOptions": "spec",
    "WiseFTOptions": "spec",
    # the call, the loop and their parts
    "finetune": "run", "_describe": "run",
    "_lr_factor": "loop",
    "FinetuneInfo": "info",
    "_Data": "data", "as_data": "data", "_model_label_ids": "data", "_task_data": "data", "_to": "data",
    "_concat": "data", "_logits": "data", "_meta": "data",
    "block_of": "blocks", "parameter_blocks": "blocks", "_set_trainable": "blocks", "_train_mode": "blocks",
    "_last_blocks": "blocks",
    "_Watch": "watch", "_state_copy": "watch", "_accuracy": "watch",
    "deterministic": "progress", "_Progress": "progress",
    "save_model": "saving", "is_peft": "saving",
    # strategies
    "Strategy": "strategies.base", "StrategyBase": "strategies.base", "make_strategy": "strategies",
    "fisher_diagonal": "strategies.ewc", "_Anchor": "strategies.l2sp", "_freeze_names": "strategies.freeze",
    "_lora": "strategies.lora", "_adalora": "strategies.adalora", "_orthogonality": "strategies.adalora",
    "interpolate": "strategies.wise_ft", "format_curve": "strategies.wise_ft", "_parse_keep": "strategies.wise_ft",
    "_wise_ft_search": "strategies.wise_ft", "_base_slot_for": "strategies.wise_ft",
    # the fixture
    "Finetuner": "finetuner", "terminal_writer": "finetuner", "fixture": "finetuner",
}  # fmt: skip

__all__ = sorted(name for name in _EXPORTS if not name.startswith("_"))


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
