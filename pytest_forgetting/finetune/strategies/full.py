"""``full``: every parameter trains (the naive baseline every remedy is measured against)."""

from __future__ import annotations

from .base import StrategyBase


class Full(StrategyBase):
    name = "full"
