"""Build the example's two checkpoints as safetensors (about a minute on 2 CPU cores).

- checkpoints/base.safetensors: the CNN trained on real MNIST (the 4,000-image train split).
- checkpoints/tuned.safetensors: the base fine-tuned naively on scikit-learn's digits upscaled
  to 28x28 (a shifted domain). It gains on digits-28 and forgets part of MNIST: the pre-merge
  check in tests/ is meant to catch exactly that.
- checkpoints/replay.safetensors and checkpoints/lora/ (a PEFT adapter folder): the same
  fine-tune with two forgetting mitigations, made with pytest_forgetting's own runner; the
  candidates of the README's "Comparing fine-tunes".

Usage: python build_checkpoints.py [--force] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cnn import build_model, train  # noqa: E402

from pytest_forgetting.registry import REGISTRY  # noqa: E402


def split_tensors(task_name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = REGISTRY.get(task_name).split(split)
    return torch.from_numpy(data.inputs), torch.from_numpy(data.labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "checkpoints"))
    ap.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    args = ap.parse_args()
    out = Path(args.out)
    base_path, tuned_path = out / "base.safetensors", out / "tuned.safetensors"
    replay_path, lora_path = out / "replay.safetensors", out / "lora"
    if all(p.exists() for p in (base_path, tuned_path, replay_path, lora_path)) and not args.force:
        print(f"checkpoints exist in {out} (use --force to rebuild)")
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    x, y = split_tensors("mnist", "train")
    base = train(build_model(), x, y, epochs=4, lr=2e-3, seed=0)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(base_path))
    print(f"base: trained on {len(x)} MNIST images in {time.perf_counter() - t0:.1f}s -> {base_path}")
    t1 = time.perf_counter()
    xd, yd = split_tensors("digits-28", "train")
    tuned = train(base, xd, yd, epochs=3, lr=2e-3, seed=1)
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, str(tuned_path))
    print(f"tuned: fine-tuned on {len(xd)} upscaled digits in {time.perf_counter() - t1:.1f}s -> {tuned_path}")
    from pytest_forgetting.finetune import finetune

    base = build_model()
    base.load_state_dict(load_file(str(base_path)))
    t2 = time.perf_counter()
    finetune(base, "digits-28", strategy="replay", retain="mnist", fraction=0.25, lr=1e-3, epochs=2, seed=0, save_to=replay_path)
    finetune(base, "digits-28", strategy="lora", r=4, lr=1e-3, epochs=2, seed=0, save_to=lora_path)
    print(f"replay, lora: mitigated fine-tunes in {time.perf_counter() - t2:.1f}s -> {replay_path}, {lora_path}")


if __name__ == "__main__":
    main()
