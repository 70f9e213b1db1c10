"""Build the speech example: spoken digit strings, a small Wav2Vec2ForCTC, a new voice.

Audio comes from the espeak-ng speech synthesiser (Debian package espeak-ng), so everything
is made offline and is reproducible:

- data/voice-a-{train,test}/: random strings of 1-4 digit words ("three one four") spoken by
  the American English voice (en-us, 170 words/min); data/voice-b-{train,test}/: the same kind
  of strings in a second voice (Scottish English, female variant, slower). WAV + transcripts.tsv.
- checkpoints/base/: a Wav2Vec2ForCTC (0.1 M parameters, character CTC vocabulary) trained
  from scratch on voice A.
- checkpoints/tuned/: the base fine-tuned on voice B only (feature encoder frozen, as usual for
  wav2vec 2.0), with nothing of voice A replayed. tests/ checks what that costs.

Usage: python build_checkpoints.py [--force]     (about 10 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORDS = "zero one two three four five six seven eight nine".split()
VOICES = {"a": dict(voice="en-us", rate=170, pitch=50), "b": dict(voice="en-gb-scotland+f3", rate=130, pitch=70)}
SR = 16_000


def digit_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def write_split(folder: Path, texts: list[str], voice: dict) -> list[np.ndarray]:
    from scipy.io import wavfile

    from pytest_forgetting.tasks.speech import synthesize_espeak

    folder.mkdir(parents=True, exist_ok=True)
    waves, lines = [], []
    for i, text in enumerate(texts):
        wave = synthesize_espeak(text, **voice)
        wavfile.write(folder / f"{folder.name}-{i:04d}.wav", SR, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
        waves.append(wave)
        lines.append(f"{folder.name}-{i:04d}\t{text}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return waves


def vocabulary(folder: Path):
    from transformers import Wav2Vec2CTCTokenizer

    chars = sorted(set("".join(WORDS)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(chars)}}))
    return Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")


def build_model(vocab_size: int):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        conv_dim=(32, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4), conv_bias=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        mask_time_prob=0.0, pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        layerdrop=0.0,
    )  # fmt: skip
    return Wav2Vec2ForCTC(config)


def train(model, tok, waves, texts, *, steps: int, lr: float, seed: int, label: str):
    import torch

    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        batch = rng.sample(range(len(waves)), 16)
        width = max(len(waves[i]) for i in batch)
        x = torch.zeros(len(batch), width)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            w = waves[i]
            x[row, : len(w)] = torch.from_numpy((w - w.mean()) / np.sqrt(w.var() + 1e-7))
            mask[row, : len(w)] = 1
        ids = [tok(texts[i]).input_ids for i in batch]
        labels = torch.full((len(batch), max(map(len, ids))), -100)
        for row, seq in enumerate(ids):
            labels[row, : len(seq)] = torch.tensor(seq)
        loss = model(input_values=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"{label} step {step:4d}  ctc loss {loss.item():.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def save(model, tok, folder: Path) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True).save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if the checkpoints exist")
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--tune-steps", type=int, default=200)
    args = ap.parse_args()
    ckpt, data = HERE / "checkpoints", HERE / "data"
    if (ckpt / "tuned" / "model.safetensors").exists() and not args.force:
        print(f"checkpoints exist in {ckpt} (use --force to rebuild)")
        return
    import torch

    t0 = time.perf_counter()
    texts = {
        "voice-a-train": digit_strings(600, 1), "voice-a-test": digit_strings(200, 2),
        "voice-b-train": digit_strings(300, 3), "voice-b-test": digit_strings(200, 4),
    }  # fmt: skip
    waves = {name: write_split(data / name, t, VOICES[name[6]]) for name, t in texts.items()}
    print(f"synthesised {sum(map(len, texts.values()))} utterances with espeak-ng in {time.perf_counter() - t0:.0f} s", flush=True)

    tok = vocabulary(ckpt / "base")
    model = build_model(len(tok))
    model = train(model, tok, waves["voice-a-train"], texts["voice-a-train"], steps=args.base_steps, lr=2e-3, seed=0, label="base")
    save(model, tok, ckpt / "base")
    model.freeze_feature_encoder()
    model = train(model, tok, waves["voice-b-train"], texts["voice-b-train"], steps=args.tune_steps, lr=2e-3, seed=1, label="tune")
    save(model, tok, ckpt / "tuned")
    print(f"wrote {ckpt}/base and {ckpt}/tuned in {time.perf_counter() - t0:.0f} s; torch {torch.__version__}")


if __name__ == "__main__":
    main()
