"""Early stopping during ``finetune``: held-out accuracy, optional retained accuracy, the best weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import _Data, _logits, _to, as_data
from .info import FinetuneInfo
from .spec import EarlyStopping


class _Watch:
    """Early-stopping bookkeeping: held-out accuracy, optional retained accuracy, best weights."""

    def __init__(
        self,
        early: EarlyStopping,
        model: Any,
        data: _Data,
        val_idx: np.ndarray,
        tokenizer: Any,
        device: Any,
        seed: int,
        info: FinetuneInfo,
    ) -> None:
        self.early, self.data, self.val_idx, self.device, self.info = early, data, val_idx, device, info
        self.retain: _Data | None = None
        if early.retain is not None:
            self.retain = as_data(
                early.retain,
                split=early.retain_split,
                tokenizer=tokenizer,
                what="early_stopping retain",
                config=getattr(model, "config", None),
            )
            n = min(early.retain_examples, self.retain.n)
            self.retain_idx = np.sort(np.random.default_rng(seed + 3).choice(self.retain.n, size=n, replace=False))
        self.retain_start = self._retained(model)
        self.best_score = _accuracy(model, data, val_idx, device)
        self.best_state = _state_copy(model)
        self.best_step = 0
        self.bad = 0
        info.validation.append({"step": 0, "val_accuracy": self.best_score, "retain_accuracy": self.retain_start})

    def _retained(self, model: Any) -> float | None:
        return None if self.retain is None else _accuracy(model, self.retain, self.retain_idx, self.device)

    def check(self, model: Any, step: int, final: bool = False) -> str:
        score = _accuracy(model, self.data, self.val_idx, self.device)
        retained = self._retained(model)
        self.info.validation.append({"step": step, "val_accuracy": score, "retain_accuracy": retained})
        broken = (
            retained is not None
            and self.retain_start is not None
            and self.retain_start - retained > self.early.max_drop
        )
        if not broken and score > self.best_score + self.early.min_delta:
            self.best_score, self.best_state, self.best_step, self.bad = score, _state_copy(model), step, 0
        elif not final:
            self.bad += 1
        if broken:
            return "retain_drop"
        if self.bad >= self.early.patience:
            return "early_stopping"
        return ""

    def restore(self, model: Any) -> None:
        if self.early.restore_best:
            model.load_state_dict(self.best_state)
            self.info.best_step = self.best_step


def _state_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _accuracy(model: Any, data: _Data, indices: np.ndarray, device: Any, batch_size: int = 256) -> float:
    import torch

    if len(indices) == 0:
        return float("nan")
    was = {m: m.training for m in model.modules()}
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(indices), batch_size):
            x, y = data.batch(indices[lo : lo + batch_size])
            correct += int((_logits(model, _to(x, device)).argmax(dim=1).cpu() == y).sum())
    for m, training in was.items():
        m.training = training
    return correct / len(indices)
