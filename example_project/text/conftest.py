"""The text example's own task: BBC News with a slice column, for the worst-slice gap check.

``bbc-news-by-length`` is the built-in ``bbc-news`` (same articles, ids, labels and split) with a
``length`` column: ``short`` for articles of at most the corpus's median word count (over all
2,225 articles, so the buckets do not depend on the split), ``long`` above it. Two slices of about
222 test articles each: enough for ``max_gap_increase=0.10`` to settle for an unchanged model
(``pytest_forgetting.gap`` needs ``min_n_per_slice(margin, 2)`` = 86 per slice), not once a few
articles flip (the README's measured run: INCONCLUSIVE).
"""

import numpy as np

import pytest_forgetting as pf


@pf.task("bbc-news-by-length")
def bbc_news_by_length():
    from pytest_forgetting.registry import REGISTRY

    bbc = REGISTRY.get("bbc-news")
    words = {name: np.array([len(t.split()) for t in bbc.split(name).inputs]) for name in bbc.split_names()}
    median = float(np.median(np.concatenate(list(words.values()))))
    splits = {}
    for name in bbc.split_names():
        d = bbc.split(name)
        length = np.where(words[name] <= median, "short", "long")
        splits[name] = (d.inputs, d.labels, d.ids, {"length": length})
    return pf.TextClassificationTask(splits=splits, class_names=bbc.class_names(), max_length=bbc.max_length)
