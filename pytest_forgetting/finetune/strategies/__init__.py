"""The fine-tuning strategies, one module each, behind the ``Strategy`` protocol of ``base.py``.

``TABLE`` maps every name of ``spec.STRATEGIES`` to its class; :func:`make_strategy` is the one
place a name becomes a strategy object. A strategy's options are the dataclass of the same name in
``finetune/spec.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec import options_of
from .adalora import AdaLora
from .base import FinishContext, Strategy, StrategyBase, TrainContext
from .ewc import EWC
from .freeze import Freeze
from .full import Full
from .gradual_unfreeze import GradualUnfreeze
from .l2sp import L2SP
from .lora import Lora
from .replay import Replay
from .wise_ft import WiseFT

#: strategy name -> class (keys: exactly ``spec.STRATEGIES``, in its order; checked by
#: tests/test_finetune_equivalence.py)
TABLE: dict[str, type[StrategyBase]] = {
    cls.name: cls for cls in (Full, Freeze, GradualUnfreeze, Lora, AdaLora, L2SP, EWC, Replay, WiseFT)
}


def make_strategy(name: str, opts: Mapping[str, Any]) -> Strategy:
    """The strategy ``name`` with its checked options (``spec.check_options``)."""
    return TABLE[name](options_of(name, opts))


__all__ = ["TABLE", "FinishContext", "Strategy", "StrategyBase", "TrainContext", "make_strategy"]
