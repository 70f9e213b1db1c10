"""Old name of :mod:`pytest_forgetting.hyperparams` (Hypothesis search strategies over ``finetune`` arguments).

``import pytest_forgetting.strategies as fs`` keeps working and gives that very module (same
functions, same objects), so code written against the old name needs no change. New code imports
``pytest_forgetting.hyperparams``: in this package a "strategy" is a fine-tuning strategy.
"""

from __future__ import annotations

import sys

from . import hyperparams

sys.modules[__name__] = hyperparams
