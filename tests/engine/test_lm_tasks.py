"""Causal language models: held-out likelihood, greedy exact match, LoRA adapters as the tuned checkpoint.

Everything runs on a tiny config-built ``LlamaForCausalLM`` with a word-level tokenizer built
in ``tmp_path``. The base memorises a handful of made-up facts ("the capital of vel is
orin"); the tuned checkpoint is a PEFT LoRA adapter trained hard on a different template
("the colour of vel is ..."), which improves that text and overwrites the facts.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_forgetting.checkpoints import load_checkpoint  # noqa: E402
from pytest_forgetting.checks import bind_task, parse_check  # noqa: E402
from pytest_forgetting.errors import ConfigError, TaskError  # noqa: E402
from pytest_forgetting.evaluate import NonFiniteOutputs, evaluate  # noqa: E402
from pytest_forgetting.metrics import LM_METRICS  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta  # noqa: E402
from pytest_forgetting.tasks.lm import (  # noqa: E402
    GenerationExactMatchTask,
    LanguageModelingTask,
    answer_matches,
    normalize_answer,
    split_text,
)

COUNTRIES = "vel dor mak tes pira quon sul bex nim oru fay gant lum reth siv yol".split()
CITIES = "orin lask tebo varn ummo kesh zil arco pell dask mir hono ruvo tal ekka wim".split()
COLOURS = "red blue green grey pink teal gold plum rust sand jade navy rose lime onyx ruby".split()
FACTS = [f"the capital of {c} is {t}" for c, t in zip(COUNTRIES, CITIES)]
DOMAIN = [f"the colour of {c} is {k}" for c, k in zip(COUNTRIES, COLOURS)]
WORDS = sorted({w for s in FACTS + DOMAIN for w in s.split()} | {"a", "the", "what", "where"})


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_llama(tok, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(tok, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def fit(model, tok, texts, *, steps: int, lr: float, params=None):
    """Full-batch causal LM training on ``texts`` (each followed by the end token)."""
    enc = tok([t + " </s>" for t in texts], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    model.train()
    with one_thread():
        for _ in range(steps):
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(root folder, tokenizer, base model): base/ is an HF folder, lora/ a PEFT adapter folder."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("lm")
    tok = word_tokenizer()
    base = fit(tiny_llama(tok), tok, FACTS, steps=200, lr=1e-2)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    torch.manual_seed(1)
    lora = peft.get_peft_model(
        fit_copy(base),
        peft.LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
        ),
    )
    fit(lora, tok, DOMAIN, steps=80, lr=3e-2, params=[p for p in lora.parameters() if p.requires_grad])
    lora.save_pretrained(root / "lora")
    return root, tok, base


def fit_copy(model):
    import copy

    return copy.deepcopy(model)


def meta(tok) -> ModelMeta:
    return ModelMeta(tokenizer=tok, tokenizer_fingerprint="test")


def named(task, name):
    task.name = name
    return task


# -- language modelling ------------------------------------------------------------------------


def test_nll_is_the_models_own_loss_and_batch_independent(lm):
    _, tok, base = lm
    texts = ["the capital of vel is orin", "what is the colour of dor", "the capital of bex is arco a the"]
    task = named(LanguageModelingTask(texts), "lm")
    one = evaluate(task, base, split="test", meta=meta(tok), batch_size=1)
    three = evaluate(task, base, split="test", meta=meta(tok), batch_size=3)  # right padding in the batch
    np.testing.assert_allclose(one.outputs["nll"], three.outputs["nll"], rtol=1e-5)
    np.testing.assert_array_equal(one.outputs["ntok"], three.outputs["ntok"])
    for i, text in enumerate(texts):
        ids = tok(text, return_tensors="pt").input_ids
        # lm-eval's rolling convention: the text's own tokens (here <s> + words) are all scored,
        # the first one given the prefix token (BOS): one more token than the model's own loss counts
        full = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
        with torch.no_grad():
            loss = base(full, labels=full).loss.item()
        assert one.outputs["ntok"][i] == ids.shape[1]
        assert one.outputs["nll"][i] == pytest.approx(loss * ids.shape[1], rel=1e-5)
    ppl = LM_METRICS["perplexity"].value(one.outputs)
    assert ppl == pytest.approx(math.exp(one.outputs["nll"].sum() / one.outputs["ntok"].sum()))
    assert LM_METRICS["nll"].value(one.outputs) == pytest.approx(math.log(ppl))


def test_nan_logits_are_reported_per_example(lm):
    _, tok, base = lm

    class Broken(torch.nn.Module):
        config = base.config

        def forward(self, input_ids, attention_mask=None, **_):
            logits = base(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
            logits[(input_ids == tok.convert_tokens_to_ids("capital")).any(dim=1)] = float("nan")
            return logits

    task = named(
        LanguageModelingTask(["the capital of vel is orin", "the colour of vel is red"], ids=["cap", "col"]), "lm"
    )
    with pytest.raises(NonFiniteOutputs) as exc:
        evaluate(task, Broken(), split="test", meta=meta(tok))
    assert exc.value.ids == ["cap"]


def test_language_modelling_task_validation(tmp_path):
    with pytest.raises(TaskError, match="empty texts"):
        LanguageModelingTask(["fine text", "   "])
    with pytest.raises(TaskError, match="unique"):
        LanguageModelingTask(["a b", "c d"], ids=["x", "x"])
    doc = tmp_path / "doc.txt"
    doc.write_text("First paragraph is long enough to keep.\n\nshort\n\n  Second   paragraph,\nwrapped over lines. \n")
    assert split_text(doc.read_text(), min_chars=10) == [
        "First paragraph is long enough to keep.",
        "Second paragraph, wrapped over lines.",
    ]
    task = LanguageModelingTask.from_text_file(doc, min_chars=10)
    assert task.ids("test").tolist() == ["doc.txt:0", "doc.txt:1"]
    split = LanguageModelingTask.from_text_file(doc, min_chars=10, test_fraction=0.5)
    assert sorted(split.split_names()) == ["test", "train"] and split.size("test") == 1
    assert task.data_fingerprint("test") != LanguageModelingTask(task.texts("test"), max_length=8).data_fingerprint(
        "test"
    )


def test_builtin_python_docs_text():
    from pytest_forgetting.registry import REGISTRY

    task = REGISTRY.get("python-docs")
    assert isinstance(task, LanguageModelingTask) and task.default_metric == "perplexity"
    texts = task.texts("test")
    assert len(texts) > 200 and min(map(len, texts)) >= 200
    assert len(set(task.ids("test").tolist())) == len(texts)


def test_perplexity_margins_are_in_perplexity_units():
    task = named(LanguageModelingTask(["a b c"]), "lm")
    from pytest_forgetting.registry import REGISTRY

    with REGISTRY.temporary("tiny-heldout", lambda: task, origin="test_lm_tasks"):
        check = parse_check("retains", {"task": "tiny-heldout", "metric": "perplexity", "max_drop": 5.0}, "here")
        assert bind_task(check, "here", task).margin == 5.0
        with pytest.raises(ConfigError, match="outside"):
            parse_check(
                "retains", {"task": "tiny-heldout", "metric": "perplexity", "max_drop": 5.0, "relative": True}, "here"
            )
        assert (
            bind_task(parse_check("retains", {"task": "tiny-heldout", "max_drop": 1.0}, "here"), "here", task).metric
            == "perplexity"
        )


# -- greedy generation ---------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_greedy_decoding_matches_generate_with_left_padding(lm, build):
    _, tok, _ = lm
    model = build(tok, seed=3)  # random weights: long, arbitrary continuations
    prompts = ["the", "the capital of vel is", "what is a", "the colour of"]
    expected = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=2)
        expected.append(tok.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True))
    targets = [expected[0], expected[1], "nothing like it", [expected[3].upper(), "x"]]
    task = named(GenerationExactMatchTask(prompts, targets, max_new_tokens=5, stop=()), "qa")
    result = evaluate(task, model, split="test", meta=meta(tok), batch_size=4)
    assert task.generations(result, tok) == {f"test/{i}": e for i, e in enumerate(expected)}
    assert result.outputs["exact"].tolist() == [True, True, expected[2] == "nothing like it", True]

    class Plain(torch.nn.Module):  # no config, no cache: the loop re-feeds the whole sequence
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, ids):
            return self.inner(ids).logits

    single = named(GenerationExactMatchTask(prompts[1:2], targets[1:2], max_new_tokens=5, stop=()), "qa1")
    plain = evaluate(single, Plain(), split="test", meta=meta(tok), batch_size=1)
    assert single.generations(plain, tok) == {"test/0": expected[1]}


def test_answer_matching():
    assert normalize_answer('  "Paris."  ') == "paris"
    assert answer_matches("The capital is Paris.", ["paris"], "contains", normalize_answer)
    assert not answer_matches("Parisian food", ["paris"], "contains", normalize_answer)
    assert answer_matches("Paris, of course", ["Paris"], "prefix", normalize_answer)
    assert not answer_matches("It is Paris", ["Paris"], "prefix", normalize_answer)
    assert answer_matches("buenos aires", ["Buenos Aires", "BA"], "exact", normalize_answer)
    assert not answer_matches("Paris", ["paris"], "exact", lambda s: s)
    with pytest.raises(TaskError, match="match="):
        GenerationExactMatchTask(["q"], ["a"], match="fuzzy")
    with pytest.raises(TaskError, match="2 prompts but 1 targets"):
        GenerationExactMatchTask(["q", "r"], ["a"])


def test_chat_template_is_applied_when_asked(lm):
    _, tok, base = lm
    task = named(GenerationExactMatchTask(["the capital of vel is"], ["orin"], chat_template=True), "chat")
    with pytest.raises(TaskError, match="no chat template"):
        evaluate(task, base, split="test", meta=meta(tok))
    tok2 = word_tokenizer()
    tok2.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert task.render_prompt("the capital of vel is", tok2) == "the capital of vel is"


# -- a LoRA adapter as the tuned checkpoint, end to end ------------------------------------------

CONFTEST = f"""
import pytest_forgetting as pf

COUNTRIES = {COUNTRIES!r}
CITIES = {CITIES!r}
COLOURS = {COLOURS!r}


@pf.task("facts-qa")
def facts_qa():
    return pf.GenerationExactMatchTask(
        [f"the capital of {{c}} is" for c in COUNTRIES], CITIES, ids=COUNTRIES, max_new_tokens=3, stop=()
    )


@pf.task("facts-text")
def facts_text():
    return pf.LanguageModelingTask([f"the capital of {{c}} is {{t}}" for c, t in zip(COUNTRIES, CITIES)])


@pf.task("colour-text")
def colour_text():
    return pf.LanguageModelingTask([f"the colour of {{c}} is {{k}}" for c, k in zip(COUNTRIES, COLOURS)])
"""

TESTS = """
import pytest


@pytest.mark.retains(task="facts-qa", max_drop=0.25)
def test_keeps_facts():
    pass


@pytest.mark.improves(task="colour-text", metric="perplexity", min_gain=2.0)
def test_learns_colours():
    pass


@pytest.mark.retains(task="facts-text", metric="perplexity", max_drop=0.5, relative=True)
def test_facts_stay_likely():
    pass
"""


def test_lora_adapter_end_to_end(pytester, lm):
    root, tok, base = lm
    # the loader merges the adapter into a copy of the base: same outputs as the PEFT model
    peft = pytest.importorskip("peft")
    loaded_base = load_checkpoint(str(root / "base"), role="base")
    tuned = load_checkpoint(str(root / "lora"), role="tuned", base=loaded_base)
    peft_model = peft.PeftModel.from_pretrained(fit_copy(base), str(root / "lora")).eval()
    ids = tok(DOMAIN[:2], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(tuned.model(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-4)

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_lm_gate=TESTS)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        f"--base-ckpt={root / 'base'}", f"--tuned-ckpt={root / 'lora'}", "--forgetting-device", "cpu",
        "--forgetting-no-cache", "--forgetting-json", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    rows = {r["test"].rsplit("::", 1)[-1]: r for r in json.loads(Path(report).read_text())["rows"]}
    qa, colours, facts = rows["test_keeps_facts"], rows["test_learns_colours"], rows["test_facts_stay_likely"]
    assert qa["metric"] == "exact_match" and qa["n"] == len(COUNTRIES)
    assert qa["base"] == 1.0 and qa["tuned"] <= 0.5 and qa["verdict"] == "fail", qa
    # perplexity is decided by a bootstrap, which needs at least 1,000 texts (issue 11): with 16 texts the
    # honest verdict is INCONCLUSIVE, however large the change, and the reason says how many are needed
    assert colours["metric"] == "perplexity" and colours["verdict"] == "inconclusive", colours
    assert "weigh like" in colours["reason"] and "examples are needed" in colours["reason"], (
        colours
    )  # stats._MIN_UNBOUNDED_N
    assert colours["base"] - colours["tuned"] > 2.0 and colours["higher_is_better"] is False
    assert facts["drop"] == pytest.approx((facts["tuned"] - facts["base"]) / facts["base"]), (
        facts
    )  # lower is better, relative
    assert facts["drop"] > 0.5 and facts["verdict"] == "inconclusive", facts
    result.assert_outcomes(failed=3)  # INCONCLUSIVE fails by default
