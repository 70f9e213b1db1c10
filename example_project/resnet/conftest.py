"""The example's second domain, registered as a task of its own (``@pytest_forgetting.task``)."""

import pytest_forgetting as pf
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks.builtin import FASHION_CLASSES


@pf.task("fashion-mnist-inverted")
def fashion_inverted():
    """The Fashion-MNIST test images on a white background (1 - pixel), same labels and ids."""
    test = REGISTRY.get("fashion-mnist").split("test")
    return pf.ImageClassificationTask(1.0 - test.inputs, test.labels, [f"inverted:{i}" for i in test.ids], class_names=FASHION_CLASSES)
