"""The example's tasks, registered the way a model repo registers its own (``@pytest_forgetting.task``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import pytest_forgetting as pf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402



@pf.task("hamlet")
def hamlet():
    """48 passages from the held-out scenes of Hamlet (the adapter trained on the other scenes)."""
    test = corpora.hamlet_split()["test"]
    pick = np.sort(np.random.default_rng(0).choice(len(test), size=48, replace=False))
    return pf.LanguageModelingTask([test[i][1] for i in pick], [test[i][0] for i in pick])


@pf.task("bbc-news-text")
def bbc_news():
    """64 paragraphs of BBC News (2004-2005), all five topics: modern English the model must keep."""
    items = corpora.bbc_paragraphs(n=64)
    return pf.LanguageModelingTask([p for _, p in items], [i for i, _ in items])


@pf.task("short-answers")
def short_answers():
    """40 one-word questions through the chat template; greedy decoding; the answer must appear as a word."""
    qs = corpora.questions()
    return pf.GenerationExactMatchTask(
        [q for _, q, _ in qs], [a for _, _, a in qs], [i for i, _, _ in qs],
        chat_template=True, match="contains", max_new_tokens=10,
    )  # fmt: skip
