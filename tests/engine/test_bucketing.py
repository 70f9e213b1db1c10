"""Length-bucketed batching (issue 18, point 1): sorted by length, batched, outputs back in order.

Every tokenised task runs its requested examples sorted by length (stable) and puts the outputs
back in the requested order; the outputs equal those of batches in dataset order to float
tolerance, and verdicts are identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from text_helpers import make_tokenizer, sentiment_texts, tiny_bert  # noqa: E402

from pytest_forgetting.evaluate import bucket_order, evaluate, restore_order, run_model  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta, Task  # noqa: E402
from pytest_forgetting.tasks.classification import TextClassificationTask, logits_of  # noqa: E402
from pytest_forgetting.tasks.lm import GenerationExactMatchTask, LanguageModelingTask  # noqa: E402
from pytest_forgetting.tasks.token import TokenClassificationTask  # noqa: E402


class Recorder(Task):
    """Per example its own position; records the lengths of every batch it runs."""

    name = "recorder"

    def __init__(self, lengths: np.ndarray | None) -> None:
        self._lengths = lengths
        self.seen: list[list[int]] = []
        n = 0 if lengths is None else len(lengths)
        self.n = n or 10

    def ids(self, split: str) -> np.ndarray:
        return np.array([f"e{i}" for i in range(self.n)])

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        return None

    def lengths(self, prepared: Any) -> np.ndarray | None:
        return self._lengths

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        for lo in range(0, len(indices), batch_size):
            yield torch.as_tensor(indices[lo : lo + batch_size])

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        self.seen.append(batch.tolist())
        return {"pos": batch.clone(), "twice": torch.stack([batch, batch * 2], dim=1)}


def test_outputs_come_back_in_request_order_and_batches_are_sorted():
    lengths = np.array([5, 1, 9, 1, 3, 7, 2, 8, 3, 1])
    task = Recorder(lengths)
    idx = np.array([9, 2, 4, 0, 7, 1, 5])
    res = run_model(task, None, None, idx, task.ids("test"), device="cpu", dtype="float32", batch_size=3)
    assert res.outputs["pos"].tolist() == idx.tolist()
    assert res.outputs["twice"][:, 1].tolist() == (2 * idx).tolist()
    assert res.ids.tolist() == [f"e{i}" for i in idx]
    flat = [i for b in task.seen for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths[idx].tolist())
    assert flat[:2] == [9, 1]  # ties keep the requested order (stable)


def test_tasks_without_lengths_run_in_the_requested_order():
    task = Recorder(None)
    idx = np.array([3, 1, 2])
    res = run_model(task, None, None, idx, task.ids("test"), device="cpu", dtype="float32", batch_size=2)
    assert task.seen == [[3, 1], [2]]
    assert res.outputs["pos"].tolist() == [3, 1, 2]
    assert bucket_order(task, None, idx) is None


def test_order_helpers():
    order = np.array([2, 0, 1])
    back = restore_order({"a": np.array([30, 10, 20]), "scalar": np.float64(1.0)}, order)
    assert back["a"].tolist() == [10, 20, 30] and back["scalar"] == 1.0
    task = Recorder(np.array([1, 2, 3]))
    assert bucket_order(task, None, np.array([0, 1, 2])) is None  # already sorted: nothing to do
    assert bucket_order(task, None, np.array([2])) is None


def _no_lengths(monkeypatch: pytest.MonkeyPatch, task: Task) -> None:
    monkeypatch.setattr(task, "lengths", lambda prepared: None)


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    texts, labels = sentiment_texts(n, seed)
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.3  # a few long texts among short ones: dataset-order batches pad a lot
    return [t + " and the film was very good" * 4 if ln else t for t, ln in zip(texts, long)], labels


class LogitText(TextClassificationTask):
    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        logits = logits_of(model(**batch))
        out = self.score(model, logits)
        out["logits"] = logits
        out["width"] = torch.full((logits.shape[0],), batch["input_ids"].shape[1])
        return out


def test_text_classification_same_logits_with_less_padding(monkeypatch):
    tok = make_tokenizer()
    model = tiny_bert(num_labels=2)
    texts, labels = _texts(90, 1)
    task = LogitText(texts, labels)
    meta = ModelMeta(tokenizer=tok)
    idx = np.random.default_rng(0).permutation(90)[:70]
    sorted_res = evaluate(task, model, split="test", meta=meta, indices=idx, batch_size=16)
    _no_lengths(monkeypatch, task)
    plain = evaluate(task, model, split="test", meta=meta, indices=idx, batch_size=16)
    assert sorted_res.ids.tolist() == plain.ids.tolist()
    np.testing.assert_allclose(sorted_res.outputs["logits"], plain.outputs["logits"], atol=1e-5)
    assert sorted_res.outputs["pred"].tolist() == plain.outputs["pred"].tolist()
    assert sorted_res.outputs["label"].tolist() == labels[idx].tolist()
    assert sorted_res.outputs["width"].sum() < 0.8 * plain.outputs["width"].sum()


def word_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_llama(tok: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


WORDS = "a b c d e f g h i j k l m n o p".split()


def _word_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.choice([2, 3, 4, 30])))) for _ in range(n)]


def test_language_modelling_same_nll(monkeypatch):
    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    task = LanguageModelingTask(_word_texts(40, 2), max_length=64)
    meta = ModelMeta(tokenizer=tok, config=model.config)
    prepared = task.prepare("test", meta)
    assert task.lengths(prepared).shape == (40,)
    sorted_res = evaluate(task, model, split="test", meta=meta, batch_size=8, prepared=prepared)
    _no_lengths(monkeypatch, task)
    plain = evaluate(task, model, split="test", meta=meta, batch_size=8, prepared=prepared)
    np.testing.assert_allclose(sorted_res.outputs["nll"], plain.outputs["nll"], rtol=1e-5, atol=1e-4)
    assert sorted_res.outputs["ntok"].tolist() == plain.outputs["ntok"].tolist()


def _reference_scores(
    model: Any, rows: list[tuple[list[int], int]], targets: list[list[int]]
) -> tuple[list[float], list[bool], list[bool]]:
    """Each row on its own (no padding): log-softmax over its whole logits, its last n positions."""
    lls, greedy, finite = [], [], []
    for (ids, n), tgt in zip(rows, targets):
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)[len(ids) - n :]
        t = torch.tensor(tgt)
        lls.append(float(logp.gather(1, t[:, None]).sum()))
        greedy.append(bool((logp.argmax(dim=-1) == t).all()))
        finite.append(bool(torch.isfinite(logp).all()))
    return lls, greedy, finite


def _rows(seed: int) -> tuple[list[tuple[list[int], int]], list[list[int]]]:
    """Rows of 2-30 input tokens scoring their last 0..len tokens (contexts and continuations)."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for _ in range(13):
        ids = [1, *rng.integers(4, 20, size=int(rng.choice([2, 5, 30]))).tolist()]
        n = int(rng.integers(0, len(ids) + 1))
        rows.append((ids, n))
        targets.append(rng.integers(4, 20, size=n).tolist())
    return rows, targets


def test_scoring_sends_only_the_scored_positions_to_the_log_softmax(monkeypatch):
    """Padded positions never reach the log-softmax (its cost follows the real tokens, the reason
    sorted batches pay off); sums, greedy and finite flags equal a row-by-row unpadded reference."""
    from pytest_forgetting.tasks import loglik

    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    rows, targets = _rows(0)
    shapes = []
    real = torch.nn.functional.log_softmax
    monkeypatch.setattr(
        torch.nn.functional, "log_softmax", lambda x, *a, **k: shapes.append(tuple(x.shape)) or real(x, *a, **k)
    )
    with torch.inference_mode():
        lls, greedy, finite = loglik.score_rows(model, rows, targets, 0, chunk=4, greedy=True)
        lls2, none, finite2 = loglik.score_rows(model, rows, targets, 0, chunk=5)
    monkeypatch.setattr(torch.nn.functional, "log_softmax", real)
    with torch.inference_mode():
        ref_ll, ref_greedy, ref_finite = _reference_scores(model, rows, targets)
    assert (
        shapes == [(n, len(tok)) for _, n in rows] * 2
    )  # per row, over its scored positions only (not the chunk's width)
    np.testing.assert_allclose(lls.numpy(), ref_ll, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lls2.numpy(), ref_ll, rtol=1e-5, atol=1e-4)
    assert lls.dtype == torch.float64 and ref_ll[[n for _, n in rows].index(0)] == 0.0
    assert greedy.tolist() == ref_greedy and none is None
    assert finite.tolist() == finite2.tolist() == ref_finite == [True] * len(rows)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")])
def test_scoring_flags_a_non_finite_scored_logit_and_ignores_padding(bad):
    from pytest_forgetting.tasks import loglik

    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    rows = [([1, 5, 6, 7], 2), ([1, 5, 6, 7, 8, 9, 10, 11], 3), ([1, 8, 9], 1), ([1, 5, 6, 7, 8, 9], 2)]
    targets = [[6, 7], [9, 10, 11], [4], [8, 9]]

    calls = []

    def poison(module: Any, args: Any, out: Any) -> Any:  # chunks of 2 rows: rows 0-1 (width 8), rows 2-3 (width 6)
        out = out.clone()
        if not calls:
            out[1, 6, 3] = bad  # row 1: a scored position (its last 3 of 8)
            out[0, 6, 3] = bad  # row 0 (4 tokens): a padded position, never scored
        else:
            out[1, 1, 3] = bad  # row 3: an unscored context position (it scores its last 2 of 6)
        calls.append(out.shape)
        return out

    handle = model.lm_head.register_forward_hook(poison)
    try:
        with torch.inference_mode():
            lls, _, finite = loglik.score_rows(model, rows, targets, 0, chunk=2)
    finally:
        handle.remove()
    assert [tuple(c) for c in calls] == [(2, 8, len(tok)), (2, 6, len(tok))]
    assert finite.tolist() == [True, False, True, True]
    assert np.isfinite(lls.numpy()[[0, 2, 3]]).all()


def test_generation_same_tokens(monkeypatch):
    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    prompts = _word_texts(24, 3)
    task = GenerationExactMatchTask(prompts, ["a"] * 24, max_new_tokens=4)
    meta = ModelMeta(tokenizer=tok, config=model.config)
    sorted_res = evaluate(task, model, split="test", meta=meta, batch_size=8)
    _no_lengths(monkeypatch, task)
    plain = evaluate(task, model, split="test", meta=meta, batch_size=8)
    assert sorted_res.outputs["generated"].tolist() == plain.outputs["generated"].tolist()
    assert sorted_res.outputs["exact"].tolist() == plain.outputs["exact"].tolist()


def test_token_classification_same_tags(monkeypatch):
    tok = make_tokenizer()
    rng = np.random.default_rng(4)
    words = ["alice", "bob", "paris", "rome", "the", "movie", "was", "good"]
    sents = [list(rng.choice(words, size=int(rng.choice([2, 3, 12])))) for _ in range(30)]
    tags = [
        ["B-PER" if w in ("alice", "bob") else "B-LOC" if w in ("paris", "rome") else "O" for w in s] for s in sents
    ]
    names = ["O", "B-LOC", "B-PER"]
    task = TokenClassificationTask(sents, tags, tag_names=names)
    model = tiny_bert(
        "BertForTokenClassification",
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    meta = ModelMeta(tokenizer=tok, config=model.config)
    sorted_res = evaluate(task, model, split="test", meta=meta, batch_size=8)
    _no_lengths(monkeypatch, task)
    plain = evaluate(task, model, split="test", meta=meta, batch_size=8)
    assert sorted_res.outputs["tag_pred"].tolist() == plain.outputs["tag_pred"].tolist()


def test_verdicts_identical_with_and_without_buckets(tmp_path, monkeypatch):
    """A whole retains check (base and tuned BERTs from folders): the same row either way."""
    from text_helpers import check, save, session

    import pytest_forgetting as pf
    from pytest_forgetting.registry import REGISTRY

    texts, labels = _texts(120, 5)
    base = save(tiny_bert(num_labels=2, seed=0), tmp_path / "base")
    tuned = save(tiny_bert(num_labels=2, seed=1), tmp_path / "tuned")
    name = "bucketing-sentiment"
    with REGISTRY.temporary(name, lambda: pf.TextClassificationTask(texts, labels), "test_bucketing"):
        rows = []
        for bucketed in (True, False):
            if not bucketed:
                monkeypatch.setattr(TextClassificationTask, "lengths", lambda self, prepared: None)
            sess = session(base, tuned, tmp_path, no_cache=True, batch_size=16)
            for metric in ("accuracy", "f1_macro"):
                row = sess.run_check(check(name, max_drop=0.2, metric=metric), test="t").row
                rows.append({k: v for k, v in row.items() if not k.endswith("_eval_s") and not k.startswith("_")})
        assert rows[:2] == rows[2:]


# -- issue 18, point 5: libraries where they are better ------------------------------------------------
def test_edit_distance_rapidfuzz_and_python_give_the_same_counts(monkeypatch):
    from pytest_forgetting.tasks import speech

    rng = np.random.default_rng(0)
    pairs = [("".join(rng.choice(list("abc d'"), size=int(rng.integers(0, 40)))),
              "".join(rng.choice(list("abc d'"), size=int(rng.integers(0, 40))))) for _ in range(200)]  # fmt: skip
    pairs += [("", ""), ("kitten", "sitting"), ("the cat sat", "")]
    fast = [(speech.edit_distance(a, b), speech.edit_distance(a.split(), b.split())) for a, b in pairs]
    slow = [(speech.python_edit_distance(a, b), speech.python_edit_distance(a.split(), b.split())) for a, b in pairs]
    assert fast == slow
    assert speech.edit_distance("kitten", "sitting") == 3
    monkeypatch.setattr(speech, "_fast_levenshtein", lambda: None)  # without rapidfuzz: the Python version
    assert [(speech.edit_distance(a, b), speech.edit_distance(a.split(), b.split())) for a, b in pairs] == slow


def test_rapidfuzz_is_used_when_installed():
    pytest.importorskip("rapidfuzz")
    from pytest_forgetting.tasks import speech

    assert speech._fast_levenshtein() is not None


class PlainLM(torch.nn.Module):
    """A causal LM as a plain module (no config, no generate): the decoding loop."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: Any) -> Any:
        return self.inner(input_ids=ids).logits


def test_hf_models_decode_through_generate_like_the_loop():
    from pytest_forgetting.tasks.lm import greedy_decode

    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    model.generation_config.repetition_penalty = 5.0  # a checkpoint setting: must not apply
    ids = torch.tensor(tok([" ".join(WORDS[i : i + 4]) for i in range(6)])["input_ids"])  # equal lengths: no padding
    mask = torch.ones_like(ids)
    calls = []
    real = model.generate
    model.generate = lambda *a, **k: calls.append(k) or real(*a, **k)
    with torch.inference_mode():
        hf, hf_finite = greedy_decode(model, ids, mask, 6, {2}, 0)
        loop, loop_finite = greedy_decode(PlainLM(model), ids, mask, 6, {2}, 0)
    assert calls and calls[0]["generation_config"].do_sample is False and calls[0]["generation_config"].num_beams == 1
    assert model.generation_config.repetition_penalty == 5.0  # restored
    assert hf.tolist() == loop.tolist()
    assert hf_finite.tolist() == loop_finite.tolist() == [True] * 6


def test_generate_path_flags_nan_logits_per_example():
    from pytest_forgetting.tasks.lm import greedy_decode

    tok = word_tokenizer(WORDS)
    model = tiny_llama(tok)
    ids = torch.tensor(tok(["a b c", "d e f", "g h i"])["input_ids"])

    def poison(module: Any, args: Any, out: Any) -> Any:
        out = out.clone()
        out[1] = float("nan")
        return out

    handle = model.lm_head.register_forward_hook(poison)
    try:
        with torch.inference_mode():
            _, finite = greedy_decode(model, ids, torch.ones_like(ids), 3, {2}, 0)
    finally:
        handle.remove()
    assert finite.tolist() == [True, False, True]


def test_f1_macro_with_n_classes_scores_absent_classes_like_sklearn():
    from pytest_forgetting.metrics import f1_macro

    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2])
    idx = np.arange(5)
    o = {"label": y, "pred": p}
    sk = pytest.importorskip("sklearn.metrics")
    assert f1_macro(o, idx) == pytest.approx(sk.f1_score(y, p, average="macro"))
    assert f1_macro(o, idx, n_classes=5) == pytest.approx(
        sk.f1_score(y, p, labels=range(5), average="macro", zero_division=0)
    )
    assert f1_macro(o, idx, n_classes=5) == pytest.approx(f1_macro(o, idx) * 3 / 5)
