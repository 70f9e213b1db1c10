"""Embedding probes: what an encoder's backbone still knows, whatever its head.

A random tiny BERT already separates "good" from "bad" reviews in its mean-pooled embeddings
(word identity survives one layer), so a probe fitted on those embeddings is near perfect.
A tuned model whose sentiment-word embeddings were overwritten with a neutral word's has
forgotten the distinction: the probe fitted on *its* embeddings is at chance, and the paired
verdict says FAIL. The head of the model plays no part.
"""

from __future__ import annotations

import numpy as np
import pytest
from text_helpers import NEGATIVE, POSITIVE, check, labelled, make_tokenizer, save, sentiment_texts, session, tiny_bert

from pytest_forgetting.errors import ConfigError, TaskError
from pytest_forgetting.evaluate import evaluate
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks.base import ModelMeta
from pytest_forgetting.tasks.embedding import EmbeddingProbeTask, ProbeRun, pooled_embeddings

CLASSES = ["negative", "positive"]


def sentiment_task(**options) -> EmbeddingProbeTask:
    x_train, y_train = sentiment_texts(160, 0)
    x_test, y_test = sentiment_texts(200, 1)
    group = np.where(np.arange(200) % 4 == 0, "tagged", "plain")
    return EmbeddingProbeTask(
        splits={"train": (x_train, y_train), "test": (x_test, y_test, None, {"group": group})},
        class_names=CLASSES,
        **options,
    )


def meta() -> ModelMeta:
    return ModelMeta(tokenizer=make_tokenizer(), tokenizer_fingerprint="tiny")


def forget_sentiment(model):
    """Overwrite the sentiment words' embeddings with the embedding of "the"."""
    import torch

    vocab = make_tokenizer().get_vocab()
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for w in POSITIVE + NEGATIVE:
            emb[vocab[w]] = emb[vocab["the"]]
    return model


@pytest.fixture(scope="module")
def task() -> EmbeddingProbeTask:
    return sentiment_task()


# -- the probe ----------------------------------------------------------------------------------


def test_logistic_and_knn_probes_are_deterministic_and_separate_clusters():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 8)) + 4.0 * np.eye(8)[y]
    test = rng.normal(size=(30, 8)) + 4.0 * np.eye(8)[np.repeat([0, 1, 2], 10)]
    for probe in ("logistic", "knn"):
        preds = []
        for _ in range(2):
            run = ProbeRun(y, probe=probe, k=5, C=1.0, seed=0, normalize=True)
            run.add(x[:50])
            run.add(x[50:])
            preds.append(run.predict(test))
        assert np.array_equal(preds[0], preds[1])
        assert np.mean(preds[0] == np.repeat([0, 1, 2], 10)) > 0.9


def test_knn_ties_go_to_the_nearer_class():
    y = np.array([0, 1])
    run = ProbeRun(y, probe="knn", k=2, C=1.0, seed=0, normalize=False)
    run.add(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert run.predict(np.array([[0.9, 0.1], [0.2, 0.8]])).tolist() == [0, 1]


def test_non_finite_probe_embeddings_mark_every_example_non_finite():
    run = ProbeRun(np.array([0, 1]), probe="logistic", k=1, C=1.0, seed=0, normalize=True)
    run.add(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    run.predict(np.zeros((3, 2)))
    assert run.finite is False


def test_pooling_modes_and_plain_modules():
    import torch

    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return hidden

    inputs = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask}
    mean = pooled_embeddings(Plain(), inputs, "mean")
    assert torch.allclose(mean[0], hidden[0, :2].mean(0)) and torch.allclose(mean[1], hidden[1].mean(0))
    assert torch.equal(pooled_embeddings(Plain(), inputs, "cls"), hidden[:, 0])
    assert torch.equal(pooled_embeddings(Plain(), inputs, "max")[0], hidden[0, 1])


# -- the task -------------------------------------------------------------------------------------


def test_the_probe_split_cannot_be_evaluated_but_its_data_can_be_read(task):
    with pytest.raises(ConfigError, match="probe's training split"):
        task.check_split("train")
    assert task.size("train") == 160  # the data are still there (fine-tuning can use them)
    with pytest.raises(TaskError, match="not a split of the task"):
        EmbeddingProbeTask(splits={"test": (["a"], [0])})
    with pytest.raises(TaskError, match="probe="):
        sentiment_task(probe="svm")


def test_probe_settings_and_subsample_are_part_of_the_fingerprint(task):
    small = sentiment_task(probe_size=40)
    assert small.probe_size == 40
    assert np.bincount(small.labels("train")[small._probe_idx]).tolist() == [20, 20]  # stratified
    fingerprints = {
        task.data_fingerprint("test"),
        small.data_fingerprint("test"),
        sentiment_task(probe="knn").data_fingerprint("test"),
    }
    assert len(fingerprints) == 3
    assert sentiment_task().data_fingerprint("test") == task.data_fingerprint("test")


def test_probe_reads_the_backbone_whatever_the_head(task):
    """Encoder, 2-label and 5-label classifiers with the same backbone weights: same probe, same predictions."""
    outputs = []
    for cls_name, names in (
        ("BertModel", None),
        ("BertForSequenceClassification", CLASSES),
        ("BertForSequenceClassification", list("abcde")),
    ):
        model = tiny_bert(cls_name, seed=0, **(labelled(names) if names else {}))
        if cls_name != "BertModel":
            model.bert.load_state_dict(tiny_bert("BertModel", seed=0).state_dict())
        result = evaluate(task, model, split="test", meta=meta(), batch_size=64)
        outputs.append(result.outputs["pred"])
    assert task.metrics["accuracy"].value({"pred": outputs[0], "label": task.labels("test")}) > 0.95
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])


def test_the_heads_label_map_is_not_checked_against_the_probe_classes(task):
    """A topic classifier's id2label (names unlike the probe's classes) is no error: the probe never reads the head."""
    model = tiny_bert("BertForSequenceClassification", seed=0, **labelled(list("abcde")))
    model.config.architectures = ["BertForSequenceClassification"]  # as save_pretrained writes it
    task.check_model(ModelMeta(config=model.config))  # the session's check before any batch: no TaskError


def test_a_subsample_of_the_eval_split_still_fits_on_the_whole_probe_split(task):
    model = tiny_bert("BertModel")
    full = evaluate(task, model, split="test", meta=meta(), batch_size=64)
    part = evaluate(task, model, split="test", meta=meta(), batch_size=64, indices=np.arange(0, 200, 7))
    assert len(part) == len(np.arange(0, 200, 7))
    assert np.array_equal(part.outputs["pred"], full.outputs["pred"][::7])


# -- verdicts through the session -------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    base = tiny_bert("BertForSequenceClassification", **labelled(CLASSES))
    forgetful = forget_sentiment(tiny_bert("BertForSequenceClassification", **labelled(CLASSES)))
    return save(base, root / "base"), save(forgetful, root / "forgetful")


@pytest.fixture
def registered(task):
    with REGISTRY.temporary("tiny-probe", lambda: task, origin="test_embedding_tasks") as name:
        yield name


def test_backbone_forgetting_fails_and_identity_passes(encoder_folders, registered, tmp_path):
    base, forgetful = encoder_folders
    kept = session(base, base, tmp_path).run_check(check(registered, max_drop=0.05, max_class_drop=0.1), test="t")
    assert kept.verdict == "pass" and kept.row["base"] > 0.95
    lost = session(base, forgetful, tmp_path).run_check(check(registered, max_drop=0.05, max_class_drop=0.1), test="t")
    assert lost.verdict == "fail"
    assert lost.row["tuned"] < 0.7 and lost.row["nfr"] > 0.3
    assert {c["name"] for c in lost.row["worst_classes"]} <= set(CLASSES)


def test_probe_predictions_gate_slices_and_macro_f1(encoder_folders, registered, tmp_path):
    base, forgetful = encoder_folders
    sess = session(base, forgetful, tmp_path)
    sliced = sess.run_check(check(registered, max_drop=0.5, slices="group", max_class_drop=0.1), test="t")
    assert sliced.verdict == "fail"
    assert {c["name"] for c in sliced.row["worst_classes"]} == {"tagged", "plain"}
    macro = sess.run_check(check(registered, metric="f1_macro", max_drop=0.05), test="t")
    assert macro.verdict == "fail"


def test_builtin_probe_tasks_exist_with_bounded_probe_splits():
    for name in ("bbc-news-probe", "rotten-tomatoes-probe"):
        try:
            task = REGISTRY.get(name)
        except TaskError as exc:  # the data package is not installed here
            pytest.skip(str(exc))
        assert task.probe_split == "train" and task.probe_size <= 2000
        assert task.probe == "logistic" and task.pooling == "mean"


def test_a_chunked_evaluation_fits_each_model_probe_once(task):
    """--forgetting-early-stop runs the tuned model chunk by chunk: the probe split is embedded once."""
    from pytest_forgetting.evaluate import run_model

    model = tiny_bert("BertModel")
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(1))
    prepared = task.prepare("test", meta())
    ids, static = task.ids("test"), task.static_outputs("test")

    def run(idx):
        return run_model(task, model, prepared, idx, ids, device="cpu", dtype="float32", batch_size=64, static=static)

    whole = run(np.arange(200)).outputs["pred"]
    first = len(calls)
    chunks = np.concatenate([run(np.arange(lo, lo + 50)).outputs["pred"] for lo in range(0, 200, 50)])
    assert np.array_equal(chunks, whole)
    assert len(calls) - first == 4  # one eval batch per chunk, no probe batches
    forget_sentiment(model)  # weights changed in place: the probe is fitted again
    before = len(calls)
    changed = run(np.arange(200)).outputs["pred"]
    assert len(calls) - before == 3 + 4  # 160 probe texts + 200 eval texts, in batches of 64
    assert np.mean(changed == task.labels("test")) < 0.8
