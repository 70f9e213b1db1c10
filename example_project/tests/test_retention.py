"""The pre-merge contract of this model repo: what a fine-tune must keep and what it must gain."""

import pytest


@pytest.mark.retains(task="mnist", max_drop=0.02, max_class_drop=0.15)
def test_keeps_mnist_accuracy():
    """Overall MNIST accuracy within 2 points of the base, and no digit loses more than 15 points
    (with 100 test images per digit, a tighter per-class budget is rarely settled either way)."""


@pytest.mark.retains(task="mnist", metric="f1_macro", max_drop=0.03)
def test_keeps_mnist_macro_f1():
    """Macro-F1 within 3 points (a paired bootstrap over examples)."""


@pytest.mark.retains(task="mnist", max_drop=0.05, max_nfr=0.05)
def test_few_mnist_examples_flip():
    """At most 5% of the examples the base got right may be lost (negative flips)."""


@pytest.mark.improves(task="digits-28", min_gain=0.10)
def test_learns_upscaled_digits():
    """The point of the fine-tune: at least 10 points better on the new domain."""
