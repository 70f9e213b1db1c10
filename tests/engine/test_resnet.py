"""A transformers ResNet image classifier through the plugin, end to end.

The base is a tiny ``ResNetForImageClassification`` trained on ``digits-28`` and saved as a
Hugging Face folder; the tuned model is that base after a frozen-then-unfrozen fine-tune
(head only, then every layer at a lower rate) on a relabelled copy of the data, which
erases what the base knew. The plugin must load both folders, feed the 1-channel 28x28
images, and prove the regression (FAIL) and the gain (PASS).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_forgetting.checkpoints import load_checkpoint  # noqa: E402
from pytest_forgetting.evaluate import evaluate  # noqa: E402
from pytest_forgetting.registry import REGISTRY  # noqa: E402


@contextlib.contextmanager
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_resnet(seed: int = 0) -> transformers.ResNetForImageClassification:
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10,
        id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
    )  # fmt: skip
    return transformers.ResNetForImageClassification(config)


def train(model, x, y, *, epochs: int, lr: float, params=None, seed: int = 0, batch: int = 64):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = torch.nn.functional.cross_entropy(model(x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def freeze_then_unfreeze(model, x, y, *, head_epochs: int, full_epochs: int, head_lr: float, full_lr: float):
    """Stage 1: only the classifier head learns; stage 2: everything, at a lower rate."""
    for p in model.resnet.parameters():
        p.requires_grad_(False)
    train(model, x, y, epochs=head_epochs, lr=head_lr, params=list(model.classifier.parameters()), seed=1)
    for p in model.parameters():
        p.requires_grad_(True)
    return train(model, x, y, epochs=full_epochs, lr=full_lr, seed=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    data = REGISTRY.get("digits-28").split("train")
    x, y = torch.from_numpy(data.inputs), torch.from_numpy(data.labels)
    with one_thread():
        base = train(train(tiny_resnet(), x, y, epochs=2, lr=1e-2), x, y, epochs=1, lr=2e-3, seed=3)
    root = tmp_path_factory.mktemp("resnet")
    base.save_pretrained(root / "base")
    with one_thread():
        tuned = freeze_then_unfreeze(base, x, (y + 1) % 10, head_epochs=1, full_epochs=2, head_lr=1e-2, full_lr=3e-3)
    tuned.save_pretrained(root / "tuned")
    return root


def test_hf_folder_loads_and_evaluates_like_the_module(checkpoints):
    loaded = load_checkpoint(str(checkpoints / "base"), role="base")
    assert type(loaded.model).__name__ == "ResNetForImageClassification"
    task = REGISTRY.get("digits-28")
    result = evaluate(task, loaded.model, split="test", batch_size=100)
    acc = float(np.mean(result.outputs["pred"] == result.outputs["label"]))
    assert acc > 0.5, f"the tiny ResNet did not learn digits-28 (accuracy {acc:.2f})"
    # batch size must not change predictions (eval mode: batch norm uses running statistics)
    few = np.arange(0, 540, 6)
    again = evaluate(task, loaded.model, split="test", batch_size=7, indices=few)
    np.testing.assert_array_equal(result.outputs["pred"][few], again.outputs["pred"])


CONFTEST = """
import numpy as np
import pytest_forgetting as pf
from pytest_forgetting.registry import REGISTRY


@pf.task("digits-28-relabelled")
def relabelled():
    base = REGISTRY.get("digits-28")
    splits = {}
    for name in ("train", "test"):
        d = base.split(name)
        splits[name] = (d.inputs, (d.labels + 1) % 10, d.ids)
    return pf.ImageClassificationTask(splits=splits)
"""

TESTS = """
import pytest


@pytest.mark.retains(task="digits-28", max_drop=0.05, max_class_drop=0.2)
def test_keeps_digits():
    pass


@pytest.mark.improves(task="digits-28-relabelled", min_gain=0.3)
def test_learns_relabelled():
    pass


@pytest.mark.retains(task="digits-28", metric="f1_macro", max_drop=0.05)
def test_keeps_macro_f1():
    pass
"""


def test_frozen_then_unfrozen_resnet_end_to_end(pytester, checkpoints):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_resnet_gate=TESTS)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        f"--base-ckpt={checkpoints / 'base'}", f"--tuned-ckpt={checkpoints / 'tuned'}",
        "--forgetting-device", "cpu", "--forgetting-no-cache", "--forgetting-json", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=2)
    rows = {r["test"].rsplit("::", 1)[-1]: r for r in json.loads(Path(report).read_text())["rows"]}
    keep, learn, f1 = rows["test_keeps_digits"], rows["test_learns_relabelled"], rows["test_keeps_macro_f1"]
    assert keep["verdict"] == "fail" and keep["n"] == 540 and keep["base"] > 0.5 and keep["tuned"] < 0.3
    assert keep["ci_low"] > 0.05 and keep["nfr"] > 0.3 and keep["worst_classes"]
    assert learn["verdict"] == "pass" and learn["tuned"] - learn["base"] > 0.3
    assert f1["verdict"] == "fail" and f1["metric"] == "f1_macro"
    result.stdout.fnmatch_lines(["*digits-28*accuracy*FAIL*", "*digits-28-relabelled*PASS*"])
