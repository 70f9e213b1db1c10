"""Task building blocks (imported lazily by ``pytest_forgetting``)."""

from .base import EvalResult, ModelMeta, Task
from .classification import ImageClassificationTask, TextClassificationTask

__all__ = ["EvalResult", "ImageClassificationTask", "ModelMeta", "Task", "TextClassificationTask"]
