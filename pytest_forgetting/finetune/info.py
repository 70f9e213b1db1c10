"""``FinetuneInfo``: what happened during one ``finetune`` call (attached to the result as ``finetune_info``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FinetuneInfo:
    """What happened during a call; attached to the returned module as ``finetune_info``."""

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    planned_steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    stopped: str = ""
    losses: list[float] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    trainable_blocks_per_epoch: list[int] = field(default_factory=list)
    new_examples: int = 0
    replayed_examples: int = 0
    best_step: int | None = None
    fisher_mean: float | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    wise_ft_alpha: float | None = None
    wise_ft_curve: list[dict[str, Any]] = field(default_factory=list)
    saved_to: str | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
