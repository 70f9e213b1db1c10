"""The callers of the one batch generator (issue 15).

Every task that batches a padded split (text classification, embedding probes, token
classification, generation, speech recognition, and the log-likelihood scorer of language
modelling and multiple choice) goes through ``tasks.batching.trimmed_batches`` and gets the
batches it got before the merge; the expected batches are written out here by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_forgetting.tasks import batching, classification, generation, speech, token  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta  # noqa: E402
from pytest_forgetting.tasks.classification import TextClassificationTask  # noqa: E402
from pytest_forgetting.tasks.embedding import EmbeddingProbeTask  # noqa: E402
from pytest_forgetting.tasks.generation import GenerationExactMatchTask  # noqa: E402
from pytest_forgetting.tasks.lm import LanguageModelingTask  # noqa: E402
from pytest_forgetting.tasks.multiple_choice import MultipleChoiceTask  # noqa: E402
from pytest_forgetting.tasks.speech import SpeechRecognitionTask  # noqa: E402
from pytest_forgetting.tasks.token import TokenClassificationTask  # noqa: E402

WORDS = "a b c d e f g h i j".split()
BOS = 1
A, B, C, D, E, F, G, H, I, J = range(3, 13)  # noqa: E741
PAD = 13  # not 0: a pad id and a zero fill are told apart
VOCAB = 14

#: the modules that import the generator at module level (the scorer imports it where it runs)
IMPORTERS = [classification, token, generation, speech]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *WORDS, "[PAD]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="[PAD]"
    )


@pytest.fixture(scope="module")
def meta() -> ModelMeta:
    return ModelMeta(tokenizer=tiny_tokenizer(), tokenizer_fingerprint="tiny")


@pytest.fixture
def spy(monkeypatch):
    """The calls of the shared generator, patched where its callers look it up: a list of
    {"inputs": {key: kind}, "indices", "batch_size", "kwargs", "yielded"}."""
    real = batching.trimmed_batches
    calls: list[dict] = []

    def recording(tensors, lengths, indices, batch_size, **kwargs):
        call = {
            "inputs": {k: type(v).__name__ for k, v in tensors.items()},
            "indices": np.asarray(indices).tolist(),
            "batch_size": batch_size,
            "kwargs": kwargs,
            "yielded": 0,
        }
        calls.append(call)
        for item in real(tensors, lengths, indices, batch_size, **kwargs):
            call["yielded"] += 1
            yield item

    monkeypatch.setattr(batching, "trimmed_batches", recording)
    for module in IMPORTERS:
        if module.__dict__.get("trimmed_batches") is real:
            monkeypatch.setattr(module, "trimmed_batches", recording)
    return calls


class Recorder(torch.nn.Module):
    """A causal LM stand-in: records the input ids of each call, returns uniform logits."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(VOCAB))
        self.seen: list[list[list[int]]] = []

    def forward(self, input_ids):
        self.seen.append(input_ids.tolist())
        assert input_ids.dtype == torch.int64
        return torch.zeros((*input_ids.shape, VOCAB)) + self.bias.detach()


def rows(batches, key):
    return [b[key].tolist() for b in batches]


@pytest.mark.parametrize("module", IMPORTERS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_the_callers_import_the_shared_generator(module):
    assert module.trimmed_batches is batching.trimmed_batches


def test_text_classification_batches(meta, spy):
    task = TextClassificationTask(["a b c", "d", "e f", "g h i j"], [0, 1, 0, 1])
    prepared = task.prepare("test", meta)
    batches = list(task.batches(prepared, np.array([3, 0, 1, 2]), 2))
    assert rows(batches, "input_ids") == [[[G, H, I, J], [A, B, C, PAD]], [[D, PAD], [E, F]]]
    assert rows(batches, "attention_mask") == [[[1, 1, 1, 1], [1, 1, 1, 0]], [[1, 0], [1, 1]]]
    assert set(batches[0]) == set(meta.tokenizer(["a"]).keys())
    for b in batches:
        assert all(t.dtype == torch.int64 for t in b.values())
        if "token_type_ids" in b:  # every other field is padded with 0
            assert b["token_type_ids"].shape == b["input_ids"].shape and not b["token_type_ids"].any()
    assert spy == [
        {"inputs": {k: "Tensor" for k in batches[0]}, "indices": [3, 0, 1, 2], "batch_size": 2, "kwargs": {},
         "yielded": 2}
    ]  # fmt: skip


def test_embedding_probe_batches(meta, spy):
    task = EmbeddingProbeTask(splits={"train": (["a b c", "d", "e f"], [0, 1, 0]), "test": (["g", "h i j"], [1, 0])})
    prepared = task.prepare("test", meta)
    batches = list(task.batches(prepared, np.array([1, 0]), 2))
    # the probe split first, shortest texts first (stable: d, e f, a b c), then the evaluated texts in order
    assert [b["phase"] for b in batches] == ["probe", "probe", "eval"]
    assert [b["inputs"]["input_ids"].tolist() for b in batches] == [
        [[D, PAD], [E, F]], [[A, B, C]], [[H, I, J], [G, PAD, PAD]]
    ]  # fmt: skip
    assert [b["inputs"]["attention_mask"].tolist() for b in batches] == [
        [[1, 0], [1, 1]], [[1, 1, 1]], [[1, 1, 1], [1, 0, 0]]
    ]  # fmt: skip
    assert len({id(b["run"]) for b in batches}) == 1
    assert [(c["indices"], c["batch_size"], c["kwargs"], c["yielded"]) for c in spy] == [
        ([1, 2, 0], 2, {}, 2), ([1, 0], 2, {}, 1)
    ]  # fmt: skip


def test_token_classification_batches(meta, spy):
    task = TokenClassificationTask(
        [["a", "b"], ["c"], ["d", "e", "f"]], [["O", "B-X"], ["O"], ["B-X", "O", "O"]], tag_names=["O", "B-X"]
    )
    prepared = task.prepare("test", meta)
    batches = list(task.batches(prepared, np.array([2, 1, 0]), 2))
    assert [b["inputs"]["input_ids"].tolist() for b in batches] == [[[D, E, F], [C, PAD, PAD]], [[A, B]]]
    assert [b["inputs"]["attention_mask"].tolist() for b in batches] == [[[1, 1, 1], [1, 0, 0]], [[1, 1]]]
    assert rows(batches, "first") == [[[0, 1, 2], [0, -1, -1]], [[0, 1, -1]]]
    assert rows(batches, "n_words") == [[3, 1], [2]]
    assert [(c["indices"], c["batch_size"], c["kwargs"], c["yielded"]) for c in spy] == [([2, 1, 0], 2, {}, 2)]


def test_generation_batches_are_left_padded(meta, spy):
    task = GenerationExactMatchTask(["a b c", "d", "e f"], ["x", "y", "z"], max_new_tokens=2)
    prepared = task.prepare("test", meta)
    batches = list(task.batches(prepared, np.array([1, 2, 0]), 2))
    assert rows(batches, "input_ids") == [[[PAD, D], [E, F]], [[A, B, C]]]
    assert rows(batches, "attention_mask") == [[[0, 1], [1, 1]], [[1, 1, 1]]]
    assert [[tuple(t) for t in b["targets"]] for b in batches] == [[("y",), ("z",)], [("x",)]]
    assert all(b["context"] is prepared["context"] for b in batches)
    assert spy == [
        {"inputs": {"input_ids": "Tensor", "attention_mask": "Tensor"}, "indices": [1, 2, 0], "batch_size": 2,
         "kwargs": {"left": True}, "yielded": 2}
    ]  # fmt: skip


def test_speech_batches_are_zero_padded_per_batch(meta, spy):
    waves = [(k + 1 + np.linspace(0.0, 0.5, n)).astype(np.float32) for k, n in enumerate([400, 600, 450])]
    task = SpeechRecognitionTask(waves, ["a", "b", "c"], normalize_audio=False)
    prepared = task.prepare("test", meta)
    batches = list(task.batches(prepared, np.array([2, 0, 1]), 2))
    want = [
        np.stack([waves[2], np.concatenate([waves[0], np.zeros(50, np.float32)])]),
        waves[1][None, :],
    ]
    assert [b["input_values"].dtype for b in batches] == [torch.float32] * 2
    assert [b["input_values"].shape for b in batches] == [(2, 450), (1, 600)]
    for b, w in zip(batches, want):
        assert np.array_equal(b["input_values"].numpy(), w)
    assert rows(batches, "attention_mask") == [[[1] * 450, [1] * 400 + [0] * 50], [[1] * 600]]
    assert [b["references"] for b in batches] == [["c", "a"], ["b"]]
    assert spy == [
        {"inputs": {"input_values": "Ragged"}, "indices": [2, 0, 1], "batch_size": 2,
         "kwargs": {"mask": "attention_mask"}, "yielded": 2}
    ]  # fmt: skip


def test_language_modelling_windows_are_right_padded_in_chunks(meta, spy):
    task = LanguageModelingTask(["a b c", "d"], max_length=2)
    prepared = task.prepare("test", meta)
    # rolling windows of 2: "a b c" -> [<s> a] scores a b, [a b] scores c; "d" -> [<s>] scores d
    assert [[(r[0], r[1]) for r in text] for text in prepared["rows"]] == [[([BOS, A], 2), ([A, B], 1)], [([BOS], 1)]]
    model = Recorder()
    (batch,) = task.batches(prepared, np.array([1, 0]), 2)
    out = task.forward(model, batch)
    # the batch's windows in order ("d" first), two rows per model call, padded on the right with the pad id
    assert model.seen == [[[BOS, PAD], [BOS, A]], [[A, B]]]
    assert out["nll"].tolist() == pytest.approx([math.log(VOCAB), 3 * math.log(VOCAB)])
    assert [(c["inputs"], c["indices"], c["batch_size"], c["kwargs"], c["yielded"]) for c in spy] == [
        ({"input_ids": "Ragged"}, [0, 1, 2], 2, {}, 2)
    ]  # fmt: skip


def test_multiple_choice_requests_are_right_padded_in_chunks(meta, spy):
    task = MultipleChoiceTask(["a", "b c"], [["b", "c d"], ["e", "f"]], [0, 1])
    prepared = task.prepare("test", meta)
    model = Recorder()
    outs = [task.forward(model, b) for b in task.batches(prepared, np.array([1, 0]), 1)]
    # per question its choices' inputs (context + continuation but the last token), chunks of 2 rows
    assert model.seen == [[[B, C], [B, C]], [[A, PAD], [A, C]]]
    log_v = math.log(VOCAB)
    assert [o["ll"].tolist() for o in outs] == [
        [pytest.approx([-log_v, -log_v])],
        [pytest.approx([-log_v, -2 * log_v])],
    ]
    assert [(c["inputs"], c["indices"], c["batch_size"], c["kwargs"], c["yielded"]) for c in spy] == [
        ({"input_ids": "Ragged"}, [0, 1], 2, {}, 1), ({"input_ids": "Ragged"}, [0, 1], 2, {}, 1)
    ]  # fmt: skip
