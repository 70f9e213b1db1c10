"""pytest-forgetting: gate fine-tuned checkpoints on what the base model could do.

Public names are exported lazily (PEP 562) so that ``import pytest_forgetting`` stays cheap
and never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "task": "pytest_forgetting.registry:task",
    "Task": "pytest_forgetting.tasks.base:Task",
    "EvalResult": "pytest_forgetting.tasks.base:EvalResult",
    "ImageClassificationTask": "pytest_forgetting.tasks.classification:ImageClassificationTask",
    "TextClassificationTask": "pytest_forgetting.tasks.classification:TextClassificationTask",
    "LanguageModelingTask": "pytest_forgetting.tasks.lm:LanguageModelingTask",
    "GenerationExactMatchTask": "pytest_forgetting.tasks.lm:GenerationExactMatchTask",
    "MultipleChoiceTask": "pytest_forgetting.tasks.multiple_choice:MultipleChoiceTask",
    "LmEvalTask": "pytest_forgetting.tasks.lm_eval:LmEvalTask",
    "SpeechRecognitionTask": "pytest_forgetting.tasks.speech:SpeechRecognitionTask",
    "TokenClassificationTask": "pytest_forgetting.tasks.token:TokenClassificationTask",
    "EmbeddingProbeTask": "pytest_forgetting.tasks.embedding:EmbeddingProbeTask",
    "from_csv": "pytest_forgetting.tasks.loaders:from_csv",
    "from_jsonl": "pytest_forgetting.tasks.loaders:from_jsonl",
    "from_conll": "pytest_forgetting.tasks.loaders:from_conll",
    "from_hf_dataset": "pytest_forgetting.tasks.loaders:from_hf_dataset",
    "from_hub": "pytest_forgetting.tasks.loaders:from_hub",
    "compare_scores": "pytest_forgetting.stats:compare_scores",
    "compare_statistic": "pytest_forgetting.stats:compare_statistic",
    "Comparison": "pytest_forgetting.stats:Comparison",
    "Metric": "pytest_forgetting.metrics:Metric",
    "ForgettingError": "pytest_forgetting.errors:ForgettingError",
    "CheckpointError": "pytest_forgetting.errors:CheckpointError",
    "ConfigError": "pytest_forgetting.errors:ConfigError",
    "TaskError": "pytest_forgetting.errors:TaskError",
    "evaluate": "pytest_forgetting.evaluate:evaluate",
    "load_checkpoint": "pytest_forgetting.checkpoints:load_checkpoint",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        if name in ("hyperparams", "strategies"):  # Hypothesis search strategies ("strategies": the old name)
            return importlib.import_module(f"pytest_forgetting.{name}")
        raise AttributeError(f"module 'pytest_forgetting' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
