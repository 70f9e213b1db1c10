"""Build the ResNet example: a transformers ResNet on Fashion-MNIST, then a new photo studio.

- checkpoints/base/: ResNetForImageClassification (9.6 k parameters, bottleneck blocks, 1 input channel)
  trained on 20,000 images of the Fashion-MNIST training set (Debian dataset-fashion-mnist).
- The new domain: the same garments photographed on a white background (pixel values
  inverted). The base has never seen it.
- checkpoints/tuned-naive/: the base fine-tuned on 10,000 inverted training images only,
  frozen then unfrozen: one epoch training the classifier head alone, then two epochs of
  every layer at a lower learning rate.
- checkpoints/tuned-replay/: the same schedule, but every batch mixes in original images
  (half of each batch), the standard cure for forgetting.

Both tuned folders are Hugging Face folders (config.json + model.safetensors) that the plugin
loads by their config's architectures. Usage: python build_checkpoints.py [--force]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks.builtin import FASHION_CLASSES

HERE = Path(__file__).resolve().parent


def build_model() -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_labels=10,
        id2label=dict(enumerate(FASHION_CLASSES)), label2id={c: i for i, c in enumerate(FASHION_CLASSES)},
    )  # fmt: skip
    return ResNetForImageClassification(config)


def train(model, batches, *, lr: float, params=None) -> ResNetForImageClassification:
    opt = torch.optim.Adam(params if params is not None else [p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def epochs(x, y, n: int, seed: int, batch: int = 64, replay=None):
    """Shuffled mini-batches for n epochs; with replay=(x0, y0) half of each batch comes from there."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for idx in torch.randperm(len(x), generator=gen).split(batch if replay is None else batch // 2):
            if replay is None:
                yield x[idx], y[idx]
            else:
                old = torch.randint(len(replay[0]), (len(idx),), generator=gen)
                yield torch.cat([x[idx], replay[0][old]]), torch.cat([y[idx], replay[1][old]])


def freeze_then_unfreeze(model, x, y, *, replay=None, seed: int = 1):
    for p in model.resnet.parameters():
        p.requires_grad_(False)
    train(model, epochs(x, y, 1, seed, replay=replay), lr=3e-3, params=list(model.classifier.parameters()))
    for p in model.parameters():
        p.requires_grad_(True)
    return train(model, epochs(x, y, 2, seed + 1, replay=replay), lr=1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out = HERE / "checkpoints"
    if (out / "tuned-replay" / "model.safetensors").exists() and not args.force:
        print(f"checkpoints exist in {out} (use --force to rebuild)")
        return
    t0 = time.perf_counter()
    train_split = REGISTRY.get("fashion-mnist").split("train")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_split.labels))
    base_idx, tune_idx = order[:20_000], order[20_000:30_000]  # disjoint images for the two stages
    x_all, y_all = torch.from_numpy(train_split.inputs), torch.from_numpy(train_split.labels)
    x0, y0 = x_all[base_idx], y_all[base_idx]
    x1, y1 = 1.0 - x_all[tune_idx], y_all[tune_idx]  # the white-background studio

    base = train(build_model(), epochs(x0, y0, 3, seed=0), lr=3e-3)
    base.save_pretrained(out / "base")
    print(f"base trained in {time.perf_counter() - t0:.0f} s", flush=True)
    for name, replay in (("tuned-naive", None), ("tuned-replay", (x0, y0))):
        tuned = ResNetForImageClassification.from_pretrained(out / "base")
        freeze_then_unfreeze(tuned, x1, y1, replay=replay)
        tuned.save_pretrained(out / name)
        print(f"{name} fine-tuned ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
