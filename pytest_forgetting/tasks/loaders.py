"""Build tasks from files and Hugging Face ``datasets``: CSV, JSONL, CoNLL, datasets on disk, hub ids.

Every loader ends in the same builder, so the column conventions are the same everywhere:

- ``kind``: ``"text"`` (:class:`TextClassificationTask`), ``"embedding"``
  (:class:`EmbeddingProbeTask`), ``"image"`` (:class:`ImageClassificationTask`) or ``"token"``
  (:class:`TokenClassificationTask`).
- Column names: ``text=`` (text kinds), ``image=`` (image kind: file paths relative to the
  data file, PIL images from a ``datasets.Image`` column, or arrays), ``label=``; ``tokens=`` and
  ``tags=`` (token kind: lists, or whitespace-separated strings in CSV); ``id=`` (stable example
  ids; default: the column ``"id"`` when there is one, else ``"<split>/<row>"``).
- Splits: a mapping ``{split: path}``, a ``split_column=`` whose values name each row's split,
  or the splits of a ``DatasetDict``; a single unsplit file is the split ``"test"``.
- Slices: ``columns=None`` keeps every other column of scalar values (str, int, float, bool)
  as a slice column, so ``retains(..., slices="column")`` works out of the box; pass a list to
  choose, or ``[]`` for none.
- Labels: class names come from ``class_names=`` (text/image) or ``tag_names=`` (token), else
  from a ``datasets.ClassLabel`` feature, else from the data (sorted strings; integer labels
  stay integers, also when a CSV spells them as text).

Everything else (``max_length``, the probe options of the embedding kind) goes to the task.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._util import suggest
from ..errors import TaskError

KINDS = ("text", "embedding", "image", "token")
FILE_BUILDERS = ("csv", "json", "parquet", "text", "arrow")
PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_conll(
    path: PathLike, *, token_column: int = 0, tag_column: int = -1, encoding: str = "utf-8"
) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences and tags of a CoNLL-style file: one word per line, blank lines between sentences.

    Columns are separated by tabs when a line has one, else by whitespace. ``-DOCSTART-``
    lines separate documents and are skipped. A line with too few columns is an error that
    names the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read CoNLL file {path}: {exc}") from None
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    row_tags: list[str] = []

    def close() -> None:
        nonlocal words, row_tags
        if words:
            sentences.append(words)
            tags.append(row_tags)
        words, row_tags = [], []

    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            close()
            continue
        parts = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if parts[0] == "-DOCSTART-":
            close()
            continue
        try:
            word, tag = parts[token_column], parts[tag_column]
        except IndexError:
            raise TaskError(
                f"{path}:{line_no}: expected a token column {token_column} and a tag column {tag_column}, "
                f"got {len(parts)} column(s): {line!r}"
            ) from None
        if not word or not tag:
            raise TaskError(f"{path}:{line_no}: empty token or tag in {line!r}")
        words.append(word)
        row_tags.append(tag)
    close()
    if not sentences:
        raise TaskError(f"{path} holds no sentences")
    return sentences, tags


def read_csv(path: PathLike, *, delimiter: str = ",", encoding: str = "utf-8") -> dict[str, list[Any]]:
    """Columns of a CSV file with a header row (values stay strings)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding=encoding) as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not reader.fieldnames:
                raise TaskError(f"{path} has no header row")
            names = list(reader.fieldnames)
            cols: dict[str, list[Any]] = {n: [] for n in names}
            for line_no, row in enumerate(reader, 2):
                if None in row:
                    raise TaskError(f"{path}:{line_no}: more fields than the header's {len(names)}")
                for n in names:
                    cols[n].append(row[n])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaskError(f"cannot read CSV file {path}: {exc}") from None
    return cols


def read_jsonl(path: PathLike, *, encoding: str = "utf-8") -> dict[str, list[Any]]:
    """Columns of a JSON Lines file (one object per line; a key missing on a row is None)."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding=encoding) as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from None
                if not isinstance(obj, dict):
                    raise TaskError(f"{path}:{line_no}: expected a JSON object per line, got {type(obj).__name__}")
                rows.append(obj)
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read JSONL file {path}: {exc}") from None
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    return {n: [r.get(n) for r in rows] for n in names}


# --------------------------------------------------------------------------------------------
# The shared builder
# --------------------------------------------------------------------------------------------


class _Part:
    """One split's columns, with where they came from (for messages and relative image paths)."""

    def __init__(
        self,
        columns: Mapping[str, Sequence[Any]],
        source: str,
        base_dir: Path | None = None,
        names: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.columns = {k: list(v) for k, v in columns.items()}
        self.source = source
        self.base_dir = base_dir
        self.names = dict(names or {})  # ClassLabel names per column (datasets)
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise TaskError(f"{source}: columns have different lengths {sorted(lengths)}")
        self.n = lengths.pop() if lengths else 0

    def column(self, name: str, what: str) -> list[Any]:
        if name not in self.columns:
            raise TaskError(
                f"{self.source}: no {what} column {name!r}{suggest(name, list(self.columns))}; "
                f"columns: {', '.join(self.columns) or '(none)'} (choose it with {what}=...)"
            )
        return self.columns[name]

    def take(self, rows: np.ndarray, source: str) -> _Part:
        return _Part({k: [v[i] for i in rows] for k, v in self.columns.items()}, source, self.base_dir, self.names)


def _split_by_column(parts: dict[str, _Part], split_column: str | None) -> dict[str, _Part]:
    if split_column is None:
        return parts
    out: dict[str, _Part] = {}
    for part in parts.values():
        values = [str(v) for v in part.column(split_column, "split")]
        for name in dict.fromkeys(values):
            rows = np.flatnonzero(np.asarray(values) == name)
            if name in out:
                raise TaskError(
                    f"split {name!r} comes from more than one source; use either split_column= or several files"
                )
            out[name] = part.take(rows, f"{part.source} [{split_column}={name}]")
    return out


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, np.integer, np.floating, np.bool_))


def _slice_columns(part: _Part, used: set[str], columns: Sequence[str] | None) -> dict[str, np.ndarray]:
    if columns is None:
        chosen = [c for c, v in part.columns.items() if c not in used and all(_is_scalar(x) for x in v)]
    else:
        chosen = [str(c) for c in columns]
        for c in chosen:
            part.column(c, "slice")
    out = {}
    for c in chosen:
        values = part.columns[c]
        names = part.names.get(c)
        if names is not None:
            values = [names[int(v)] if v is not None else "None" for v in values]
        out[c] = np.asarray(["None" if v is None else str(v) for v in values])
    return out


def _coerce_labels(values: list[Any], where: str) -> list[Any]:
    """Labels as ints when they all are (also "3" from a CSV), else as strings."""
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        raise TaskError(f"{where}: some labels are missing")
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return [int(v) for v in values]
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [int(v) for v in values]
    if all(isinstance(v, str) for v in values):
        try:
            ints = [int(v) for v in values]
        except ValueError:
            return [v.strip() for v in values]
        if all(i >= 0 for i in ints):
            return ints
    return [str(v) for v in values]


def _id_column(part: _Part, id_column: str | None) -> str | None:
    """The id column: the one named, else ``"id"`` when the data has it (the documented default)."""
    if id_column is None and "id" in part.columns:
        return "id"
    return id_column


def _ids(part: _Part, id_column: str | None) -> list[str] | None:
    if id_column is None:
        return None
    return [str(v) for v in part.column(id_column, "id")]


def _words(value: Any, where: str) -> list[Any]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    raise TaskError(
        f"{where}: expected a list of tokens/tags (or a whitespace-separated string), got {type(value).__name__}"
    )


def _image_array(value: Any, base_dir: Path | None, where: str) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow comes with datasets/transformers
            raise TaskError(f"{where}: image files need Pillow: pip install pillow") from None
        try:
            with Image.open(path) as im:
                value = im.copy()
        except OSError as exc:
            raise TaskError(f"{where}: cannot read image {path}: {exc}") from None
    if hasattr(value, "mode") and hasattr(value, "convert"):  # a PIL image
        if value.mode not in ("L", "RGB"):
            value = value.convert("RGB" if value.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
        arr = np.asarray(value)
        return arr if arr.ndim == 2 else np.transpose(arr, (2, 0, 1))
    return np.asarray(value)


def _images(part: _Part, column: str) -> np.ndarray:
    arrays = [
        _image_array(v, part.base_dir, f"{part.source}, row {i}") for i, v in enumerate(part.column(column, "image"))
    ]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise TaskError(
            f"{part.source}: images have different shapes {sorted(shapes)[:4]}; resize them to one shape first"
        )
    if not arrays:
        raise TaskError(f"{part.source}: no images")
    return np.stack(arrays)


def build_task(
    parts: Mapping[str, _Part],
    *,
    kind: str = "text",
    text: str = "text",
    label: str = "label",
    image: str = "image",
    tokens: str = "tokens",
    tags: str | None = None,
    id: str | None = None,
    columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    tag_names: Sequence[str] | None = None,
    **options: Any,
) -> Any:
    """The task of ``kind`` over ``parts`` (one per split); see the module docstring for the conventions."""
    from .classification import ImageClassificationTask, TextClassificationTask
    from .embedding import EmbeddingProbeTask
    from .token import TokenClassificationTask

    if kind not in KINDS:
        raise TaskError(f"kind={kind!r}: expected one of {', '.join(KINDS)}{suggest(str(kind), KINDS)}")
    if not parts:
        raise TaskError("no data: the loader found no splits")
    specs: dict[str, tuple] = {}
    if kind == "token":
        for split, part in parts.items():
            tag_col = tags or next((c for c in ("tags", "ner_tags", "labels") if c in part.columns), "tags")
            words = [_words(v, f"{part.source}, row {i}") for i, v in enumerate(part.column(tokens, "tokens"))]
            tag_rows = [_words(v, f"{part.source}, row {i}") for i, v in enumerate(part.column(tag_col, "tags"))]
            if tag_names is None and tag_col in part.names:
                tag_names = part.names[tag_col]
            id_col = _id_column(part, id)
            cols = _slice_columns(part, {tokens, tag_col, id_col or ""}, columns)
            specs[split] = (words, tag_rows, _ids(part, id_col), cols)
        return TokenClassificationTask(splits=specs, tag_names=tag_names, **options)

    input_col = image if kind == "image" else text
    for split, part in parts.items():
        labels = _coerce_labels(part.column(label, "label"), part.source)
        if class_names is None and label in part.names:
            class_names = part.names[label]
        if kind == "image":
            x: Any = _images(part, input_col)
        else:
            raw = part.column(input_col, "text")
            if any(v is None for v in raw):
                raise TaskError(f"{part.source}: some texts in column {input_col!r} are missing")
            x = [str(v) for v in raw]
        id_col = _id_column(part, id)
        cols = _slice_columns(part, {input_col, label, id_col or ""}, columns)
        specs[split] = (x, labels, _ids(part, id_col), cols)
    # a mix of int and str labels across splits would not encode consistently
    kinds_seen = {type(v).__name__ for spec in specs.values() for v in spec[1][:1]}
    if len(kinds_seen) > 1:
        raise TaskError(f"labels are integers in some splits and names in others ({sorted(kinds_seen)})")
    if kind == "image":
        return ImageClassificationTask(splits=specs, class_names=class_names, **options)
    if kind == "embedding":
        return EmbeddingProbeTask(splits=specs, class_names=class_names, **options)
    return TextClassificationTask(splits=specs, class_names=class_names, **options)


def _file_parts(path: PathLike | Mapping[str, PathLike], reader: Any, what: str) -> dict[str, _Part]:
    paths = dict(path) if isinstance(path, Mapping) else {"test": path}
    parts = {}
    for split, p in paths.items():
        p = Path(p)
        if not p.is_file():
            raise TaskError(f"{what} file {p} does not exist")
        parts[str(split)] = _Part(reader(p), str(p), base_dir=p.parent)
    return parts


# --------------------------------------------------------------------------------------------
# File loaders
# --------------------------------------------------------------------------------------------


def from_csv(
    path: PathLike | Mapping[str, PathLike],
    *,
    kind: str = "text",
    split_column: str | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    **spec: Any,
) -> Any:
    """A task from a CSV file with a header (or ``{split: path}``); see the module docstring.

    ``pf.from_csv("reviews.csv", text="review", label="stars", split_column="split")``
    """
    parts = _file_parts(path, lambda p: read_csv(p, delimiter=delimiter, encoding=encoding), "CSV")
    return build_task(_split_by_column(parts, split_column), kind=kind, **spec)


def from_jsonl(
    path: PathLike | Mapping[str, PathLike],
    *,
    kind: str = "text",
    split_column: str | None = None,
    encoding: str = "utf-8",
    **spec: Any,
) -> Any:
    """A task from a JSON Lines file (or ``{split: path}``); token tasks use list-valued fields."""
    parts = _file_parts(path, lambda p: read_jsonl(p, encoding=encoding), "JSONL")
    return build_task(_split_by_column(parts, split_column), kind=kind, **spec)


def from_conll(
    path: PathLike | Mapping[str, PathLike],
    *,
    token_column: int = 0,
    tag_column: int = -1,
    encoding: str = "utf-8",
    tag_names: Sequence[str] | None = None,
    id_prefix: str | None = None,
    **options: Any,
) -> Any:
    """A :class:`TokenClassificationTask` from CoNLL files (``{split: path}``, or one file = ``"test"``).

    Ids are ``"<id_prefix or split>/<sentence index>"``.
    """
    from .token import TokenClassificationTask

    paths = dict(path) if isinstance(path, Mapping) else {"test": path}
    splits = {}
    for split, p in paths.items():
        words, tags = read_conll(p, token_column=token_column, tag_column=tag_column, encoding=encoding)
        prefix = id_prefix if id_prefix is not None else str(split)
        splits[str(split)] = (words, tags, [f"{prefix}/{i}" for i in range(len(words))])
    return TokenClassificationTask(splits=splits, tag_names=tag_names, **options)


# Hugging Face datasets (``hf_datasets.py``), re-exported: ``loaders.from_hf_dataset`` / ``from_hub`` as before
from .hf_datasets import from_hf_dataset as from_hf_dataset  # noqa: E402
from .hf_datasets import from_hub as from_hub  # noqa: E402
from .hf_datasets import load_hub_dataset as load_hub_dataset  # noqa: E402
