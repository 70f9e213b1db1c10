"""Tiny text models for the text-task tests: a WordPiece vocabulary and config-built BERTs.

Everything is built in memory or in tmp_path in well under a second; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
NEUTRAL = ["the", "movie", "film", "plot", "actor", "was", "is", "a", "story", "scene", "and", "very"]
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "york", "rome", "lima"]
PIECES = ["new", "##s", "##er", "##ing"]
WORDS = POSITIVE + NEGATIVE + NEUTRAL + PEOPLE + PLACES + PIECES


def make_tokenizer(words: Sequence[str] = WORDS) -> Any:
    """A fast, lower-casing BERT WordPiece tokenizer over ``words`` (plus the special tokens)."""
    from transformers import BertTokenizer

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    return BertTokenizer(vocab=vocab)


def bert_config(**overrides: Any) -> Any:
    import transformers

    kwargs = dict(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def labelled(names: Sequence[str]) -> dict[str, Any]:
    """Config kwargs naming the labels."""
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def tiny_bert(cls_name: str = "BertForSequenceClassification", seed: int = 0, **config: Any) -> Any:
    import torch
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(bert_config(**config)).eval()


def save(model: Any, folder: Path, tokenizer: Any = None) -> Path:
    model.save_pretrained(folder)
    (tokenizer or make_tokenizer()).save_pretrained(folder)
    return folder


def sentiment_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Short reviews: label 1 when the sentiment word is positive; neutral filler around it."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        word = rng.choice(POSITIVE if y else NEGATIVE)
        filler = list(rng.choice(NEUTRAL, size=rng.integers(2, 6)))
        filler.insert(int(rng.integers(0, len(filler) + 1)), word)
        texts.append(" ".join(filler))
        labels.append(y)
    return texts, np.asarray(labels)


def session(base: Any, tuned: Any, tmp_path: Path, **settings: Any) -> Any:
    """A ForgettingSession on two checkpoint references, CPU, cache in tmp_path."""
    from pytest_forgetting.options import Settings
    from pytest_forgetting.session import ForgettingSession

    opts = dict(
        base_ckpt=str(base),
        tuned_ckpts=(str(tuned),),
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        rootdir=str(tmp_path),
    )
    opts.update(settings)
    return ForgettingSession(Settings(**opts))


def check(task_name: str, kind: str = "retains", **kwargs: Any) -> Any:
    """A validated Check for ``task_name`` (as a marker would produce it)."""
    from pytest_forgetting.checks import bind_task, parse_check
    from pytest_forgetting.registry import REGISTRY

    args = {"task": task_name, **kwargs}
    if kind == "retains":
        args.setdefault("max_drop", 0.05)
    c = parse_check(kind, args, "test")
    return bind_task(c, "test", REGISTRY.get(task_name))
