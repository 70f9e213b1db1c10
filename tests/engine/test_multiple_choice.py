"""Native multiple-choice scoring and rolling perplexity equal lm-evaluation-harness's numbers.

The same tiny GPT-2 / Llama (kilobytes, a word-level tokenizer built here) is scored by the
plugin's ``MultipleChoiceTask`` / ``LanguageModelingTask`` and by lm-eval (``HFLM`` on the same
module, local YAML tasks over the same JSONL documents): per document the log-likelihoods
agree to < 1e-6 (float64 weights; float32 to float32 rounding) and acc / acc_norm are identical.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_forgetting.errors import TaskError  # noqa: E402
from pytest_forgetting.evaluate import evaluate  # noqa: E402
from pytest_forgetting.metrics import LM_METRICS  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta  # noqa: E402
from pytest_forgetting.tasks.lm import LanguageModelingTask  # noqa: E402
from pytest_forgetting.tasks.multiple_choice import MultipleChoiceTask  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_lm_tasks import CITIES, COUNTRIES, DOMAIN, FACTS, fit, tiny_gpt2, tiny_llama, word_tokenizer  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models():
    tok = word_tokenizer()
    gpt2 = fit(tiny_gpt2(tok), tok, FACTS, steps=60, lr=1e-2)
    llama = fit(tiny_llama(tok), tok, FACTS, steps=60, lr=1e-2)
    return tok, {"gpt2": gpt2, "llama": llama}


def meta(tok, model) -> ModelMeta:
    return ModelMeta(tokenizer=tok, tokenizer_fingerprint="t", config=model.config)


def mc_records():
    rows = []
    for i, (country, city) in enumerate(zip(COUNTRIES, CITIES)):
        others = [c for c in CITIES if c != city]
        choices = [city, others[i % 7], f"{others[(i + 3) % 9]} {others[(i + 5) % 11]}"][
            : 2 + i % 2
        ]  # 2 or 3 choices, of 1-2 words
        choices = choices[i % len(choices) :] + choices[: i % len(choices)]
        rows.append(
            {
                "q": f"the capital of {country} is" + (" " if i % 4 == 0 else ""),
                "choices": choices,
                "gold": choices.index(city),
            }
        )
    return rows


MC_YAML = """task: native_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

ROLLING_YAML = """task: native_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def lm_eval_samples(model, tok, folder: Path, name: str):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=4), tasks=[name],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False), log_samples=True, bootstrap_iters=0,
    )  # fmt: skip
    return sorted(res["samples"][name], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("arch, dtype", [("gpt2", torch.float64), ("llama", torch.float64), ("gpt2", torch.float32)])
def test_multiple_choice_equals_lm_eval(models, tmp_path, arch, dtype):
    import copy

    tok, built = models
    model = copy.deepcopy(built[arch]).to(dtype)
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in mc_records()))
    (tmp_path / "mc.yaml").write_text(MC_YAML.format(data=data))
    task = MultipleChoiceTask.from_jsonl(data, context="q", choices="choices", gold="gold")
    task.name = "native-mc"
    got = evaluate(task, model, split="test", meta=meta(tok, model), batch_size=3)
    want = lm_eval_samples(model, tok, tmp_path, "native_mc")
    assert len(want) == len(got) == len(COUNTRIES)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    for i, sample in enumerate(want):
        lls = [r[0] for r in sample["filtered_resps"]]
        np.testing.assert_allclose(got.outputs["ll"][i, : len(lls)], lls, rtol=0, atol=tol)
        assert got.outputs["acc"][i] == sample["acc"] and got.outputs["acc_norm"][i] == sample["acc_norm"], i
    assert 0 < got.outputs["acc"].mean() <= 1 and task.metrics["acc_norm"].value(got.outputs) == np.mean(
        [s["acc_norm"] for s in want]
    )


def long_texts():
    texts = []
    for k in range(6):
        words = " ".join(
            FACTS[(k + j) % len(FACTS)] if j % 2 else DOMAIN[(k * 3 + j) % len(DOMAIN)] for j in range(3 + 6 * k)
        )
        texts.append(words)
    return texts  # 15 to 230 words: one window, then several of 64 tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rolling_perplexity_equals_lm_eval(models, tmp_path, arch):
    import copy

    tok, built = models
    model = copy.deepcopy(built[arch]).to(torch.float64)
    texts = long_texts()
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "rolling.yaml").write_text(ROLLING_YAML.format(data=data))
    task = LanguageModelingTask(texts)
    task.name = "rolling"
    got = evaluate(task, model, split="test", meta=meta(tok, model), batch_size=2)
    assert got.outputs["ntok"].max() > 3 * 64  # several windows of the model's 64 positions
    want = lm_eval_samples(model, tok, tmp_path, "native_rolling")
    for i, sample in enumerate(want):
        ll, words = sample["word_perplexity"]
        _, nbytes = sample["byte_perplexity"]
        assert abs(got.outputs["nll"][i] + ll) < 1e-6, (i, got.outputs["nll"][i], ll)
        assert got.outputs["nwords"][i] == words and got.outputs["nbytes"][i] == nbytes
    lls = np.array([s["word_perplexity"][0] for s in want])
    words = np.array([s["word_perplexity"][1] for s in want])
    nbytes = np.array([s["byte_perplexity"][1] for s in want])
    assert LM_METRICS["word_perplexity"].value(got.outputs) == pytest.approx(np.exp(-lls.sum() / words.sum()), rel=1e-9)
    assert LM_METRICS["byte_perplexity"].value(got.outputs) == pytest.approx(
        np.exp(-lls.sum() / nbytes.sum()), rel=1e-9
    )
    assert LM_METRICS["bits_per_byte"].value(got.outputs) == pytest.approx(
        -lls.sum() / nbytes.sum() / np.log(2), rel=1e-9
    )
    # batch size does not change anything
    one = evaluate(task, model, split="test", meta=meta(tok, model), batch_size=1)
    np.testing.assert_allclose(one.outputs["nll"], got.outputs["nll"], rtol=0, atol=1e-9)


def test_text_past_the_window_counts_and_truncation_is_reported(models):
    tok, built = models
    model = built["gpt2"]
    text = " ".join(FACTS[:4])
    garbage = text + " " + " ".join(["ruby onyx what"] * 60)  # far past the 64-token window
    rolling = LanguageModelingTask([text, garbage])
    rolling.name = "rolling"
    out = evaluate(rolling, model, split="test", meta=meta(tok, model)).outputs
    assert out["ntok"][1] > 64 and out["nll"][1] > out["nll"][0] + 10  # the garbage is scored, not dropped
    cut = LanguageModelingTask([text, garbage], max_length=64, truncate=True)
    cut.name = "cut"
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than max_length=64 tokens and were cut"):
        out = evaluate(cut, model, split="test", meta=meta(tok, model)).outputs
    assert out["ntok"].tolist() == [out["ntok"][0], 64] and out["truncated"].tolist() == [False, True]
    with pytest.raises(TaskError, match="truncate=True needs max_length"):
        LanguageModelingTask(["a b"], truncate=True)


def test_multiple_choice_loaders_and_validation(tmp_path):
    rows = mc_records()[:4]
    csv = tmp_path / "mc.csv"
    csv.write_text(
        "q,a,b,gold\n"
        + "".join(f"{r['q'].strip()},{r['choices'][0]},{r['choices'][1]},{r['choices'][0]}\n" for r in rows)
    )
    task = MultipleChoiceTask.from_csv(csv, context="q", choices=["a", "b"], gold="gold")
    assert task.size("test") == 4 and task.static_outputs("test")["label"].tolist() == [0, 0, 0, 0]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    from_disk = MultipleChoiceTask.from_hf_dataset(tmp_path / "ds", context="q", choices="choices", gold="gold")
    assert from_disk.choices("test") == [r["choices"] for r in rows]
    assert from_disk.data_fingerprint("test") != task.data_fingerprint("test")
    with pytest.raises(TaskError, match="not among the choices"):
        MultipleChoiceTask(["q"], [["a", "b"]], ["c"])
    with pytest.raises(TaskError, match="at least two choices"):
        MultipleChoiceTask(["q"], [["a"]], [0])
