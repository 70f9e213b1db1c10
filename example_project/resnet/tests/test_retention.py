"""The pre-merge contract of the ResNet: learn the white-background studio, keep the catalogue."""

import pytest


@pytest.mark.retains(task="fashion-mnist", max_drop=0.03, max_class_drop=0.10)
def test_keeps_fashion_accuracy():
    """Original Fashion-MNIST accuracy within 3 points, and no garment class loses more than 10."""


@pytest.mark.retains(task="fashion-mnist", metric="f1_macro", max_drop=0.03)
def test_keeps_fashion_macro_f1():
    """Macro-F1 within 3 points (paired bootstrap over the 10,000 test images)."""


@pytest.mark.improves(task="fashion-mnist-inverted", min_gain=0.20)
def test_learns_white_background():
    """The point of the fine-tune: at least 20 points better on the new studio's photos."""
