"""The plugin's lm-eval check vs running lm-evaluation-harness twice by hand, side by side.

One process, the same machine, interleaved rounds (medians reported):

- **by hand**: load base and tuned from their folders, ``lm_eval.simple_evaluate`` each on the task
  (a ``TaskManager`` over the task folder), compare the two accuracies yourself;
- **plugin, cold**: ``ForgettingSession.run_check`` of ``retains(task="lm-eval:NAME")`` with an empty
  cache (fingerprints, checkpoint loading, task resolution, both evaluations, the paired decision);
- **plugin, base cached**: a new tuned candidate with the base's per-document results in the
  cache (a pre-merge run: only the tuned model is evaluated).

The models are a GPT-2 config (4 layers, width 256) trained for a few steps on made-up facts and
a degraded copy; the task is a local YAML multiple-choice task over N generated documents.
Targets (issue 16): cold / by hand <= 1.05, cached / by hand <= 0.55.

Usage: python benchmarks/lm_eval_bench.py [--docs 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tuned_names(rounds: int) -> list[str]:
    return ["tuned"] + [f"tuned-{r}-{kind}" for r in range(rounds) for kind in ("cold", "cached")]


def build(root: Path, n_docs: int, rounds: int) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng = __import__("random").Random(0)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qi", "do"]
    names = sorted({"".join(rng.choice(syll) for _ in range(3)) for _ in range(4 * n_docs)})[: 2 * n_docs]
    countries, cities = names[:n_docs], names[n_docs:]
    words = sorted(set(names) | {"the", "capital", "of", "is"})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(vocab),
        n_embd=256,
        n_layer=4,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base = transformers.GPT2LMHeadModel(cfg)
    facts = [f"the capital of {c} is {t}" for c, t in zip(countries, cities)]
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    enc = tok(facts[: n_docs // 2], return_tensors="pt", padding=True)
    for _ in range(30):
        loss = base(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    base.eval()
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for name in tuned_names(rounds):  # a new candidate per measurement: the plugin caches tuned results too
        tuned = transformers.GPT2LMHeadModel(cfg)
        tuned.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in tuned.transformer.h[-1].parameters():
                p.add_(torch.randn_like(p) * 0.05)
        tuned.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rows = []
    for i, (c, t) in enumerate(zip(countries, cities)):
        choices = [t, cities[(i + 1) % n_docs], cities[(i + 2) % n_docs], cities[(i + 3) % n_docs]]
        choices = choices[i % 4 :] + choices[: i % 4]
        rows.append({"q": f"the capital of {c} is", "choices": choices, "gold": choices.index(t)})
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "caps.yaml").write_text(
        f"task: bench_caps\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'caps.jsonl'}\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n'
    )


def by_hand(root: Path, batch_size: int, tuned: str = "tuned") -> float:
    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    accs = []
    for name in ("base", tuned):
        model = transformers.AutoModelForCausalLM.from_pretrained(root / name).eval()
        tok = transformers.AutoTokenizer.from_pretrained(root / name)
        tm = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
        res = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size), tasks=["bench_caps"],
                                      task_manager=tm, log_samples=True, bootstrap_iters=0)  # fmt: skip
        accs.append(res["results"]["bench_caps"]["acc,none"])
    return time.perf_counter() - t0


def plugin(root: Path, cache: Path, batch_size: int, tuned: str) -> tuple[float, dict]:
    from pytest_forgetting.checks import parse_check
    from pytest_forgetting.options import Settings
    from pytest_forgetting.registry import REGISTRY
    from pytest_forgetting.session import ForgettingSession

    REGISTRY.forget_instances()  # a fresh process would build the task again
    t0 = time.perf_counter()
    settings = Settings(base_ckpt=str(root / "base"), tuned_ckpts=(str(root / tuned),), device="cpu", batch_size=batch_size,
                        cache_dir=str(cache), lm_eval_include=(str(root / "tasks"),), rootdir=str(root))  # fmt: skip
    session = ForgettingSession(settings)
    check = parse_check("retains", {"task": "lm-eval:bench_caps", "max_drop": 0.05}, "bench")
    result = session.run_check(check, test="bench")
    return time.perf_counter() - t0, result.row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    root = Path(tempfile.mkdtemp(prefix="lm-eval-bench-"))
    build(root, args.docs, args.rounds)
    by_hand(root, args.batch_size)  # warm-up: imports, first dataset build (arrow files)
    hand, cold, warm = [], [], []
    row: dict = {}
    for r in range(args.rounds):
        cache = root / f"cache-{r}"
        hand.append(by_hand(root, args.batch_size, f"tuned-{r}-cold"))
        seconds, row = plugin(root, cache, args.batch_size, f"tuned-{r}-cold")
        assert not row["base_cached"] and row["tuned_eval_s"] > 0, row
        cold.append(seconds)
        seconds, warm_row = plugin(
            root, cache, args.batch_size, f"tuned-{r}-cached"
        )  # a new candidate, the base cached
        assert warm_row["base_cached"] and warm_row["tuned_eval_s"] > 0, warm_row
        warm.append(seconds)
        print(
            f"round {r}: by hand {hand[-1]:.2f} s, plugin cold {cold[-1]:.2f} s, plugin base cached {warm[-1]:.2f} s",
            flush=True,
        )
    h, c, w = statistics.median(hand), statistics.median(cold), statistics.median(warm)
    print(f"\n{args.docs} documents x 4 choices, batch size {args.batch_size}, {torch.get_num_threads()} threads, lm-eval "
          f"{__import__('lm_eval').__version__}")  # fmt: skip
    print(f"by hand (2 x simple_evaluate): {h:.2f} s")
    print(f"plugin, cold:                  {c:.2f} s  ratio {c / h:.3f}  (target <= 1.05)")
    print(f"plugin, base cached:           {w:.2f} s  ratio {w / h:.3f}  (target <= 0.55)")
    print(f"verdict {row['verdict']}: base {row['base']:.3f}, tuned {row['tuned']:.3f}, n {row['n']}")
    ok = c / h <= 1.05 and w / h <= 0.55
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
