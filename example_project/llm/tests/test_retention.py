"""What the Hamlet adapter must keep from SmolLM2-135M-Instruct, and what it must gain."""

import pytest


@pytest.mark.improves(task="hamlet", metric="perplexity", min_gain=2.0)
def test_learns_hamlet():
    """The point of the fine-tune: held-out scenes of Hamlet at least 2 perplexity points easier."""


@pytest.mark.retains(task="bbc-news-text", metric="perplexity", max_drop=0.05, relative=True)
def test_keeps_modern_english():
    """BBC News perplexity may rise by at most 5% of the base's."""


@pytest.mark.retains(task="short-answers", max_drop=0.10)
def test_still_answers_short_questions():
    """Greedy answers to 40 short chat questions: at most 10 points fewer right."""


@pytest.mark.retains(task="lm-eval:bbc_topics", max_drop=0.05)
def test_still_tells_news_topics():
    """An lm-eval multiple-choice task of our own (eval_tasks/): the topic of 150 BBC paragraphs, at most 5 points lost."""
