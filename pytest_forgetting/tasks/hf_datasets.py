"""Tasks from Hugging Face ``datasets``: a ``Dataset`` / ``DatasetDict`` in memory or saved on disk, a file
builder over local data files (``from_hf_dataset``), or a hub id's cached snapshot, read offline first
(``from_hub``). Each ends in :func:`.loaders.build_task`, with the column conventions of
:mod:`.loaders`; ``ClassLabel`` features give the class names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._util import suggest
from ..errors import TaskError
from .loaders import FILE_BUILDERS, PathLike, _Part, _split_by_column, build_task


def _feature_names(feature: Any) -> list[str] | None:
    """ClassLabel names of a feature, or of the items of a list-of-ClassLabel feature."""
    names = getattr(feature, "names", None)
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    inner = getattr(feature, "feature", None)
    if inner is not None and inner is not feature:
        return _feature_names(inner)
    return None


def _dataset_part(ds: Any, source: str) -> _Part:
    features = getattr(ds, "features", None) or {}
    names = {c: n for c in ds.column_names if (n := _feature_names(features.get(c))) is not None}
    return _Part({c: list(ds[c]) for c in ds.column_names}, source, names=names)


def _select_splits(
    parts: dict[str, Any], splits: Sequence[str] | Mapping[str, str] | None, source: str
) -> dict[str, Any]:
    if splits is None:
        return parts
    mapping = dict(splits) if isinstance(splits, Mapping) else {s: s for s in splits}
    missing = [s for s in mapping if s not in parts]
    if missing:
        raise TaskError(
            f"{source} has no split {missing[0]!r}{suggest(missing[0], list(parts))}; splits: {', '.join(parts)}"
        )
    return {mapping[s]: parts[s] for s in mapping}


def _as_parts(data: Any, source: str, splits: Any) -> dict[str, _Part]:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        raw = dict(data)
    elif isinstance(data, datasets.Dataset):
        raw = {"test": data}
    elif isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TaskError(f"{source}: streaming datasets are not supported; load it without streaming=True")
    else:
        raise TaskError(f"{source}: expected a datasets.Dataset or DatasetDict, got {type(data).__name__}")
    raw = _select_splits(raw, splits, source)
    return {str(s): _dataset_part(ds, f"{source} [{s}]") for s, ds in raw.items()}


def from_hf_dataset(
    data: Any,
    *,
    kind: str = "text",
    data_files: Any = None,
    splits: Sequence[str] | Mapping[str, str] | None = None,
    split_column: str | None = None,
    cache_dir: PathLike | None = None,
    **spec: Any,
) -> Any:
    """A task from Hugging Face ``datasets`` data, all local.

    ``data`` is one of: a ``Dataset`` (the split ``"test"``) or ``DatasetDict``; a folder written
    by ``save_to_disk`` (read with ``datasets.load_from_disk``); or a file builder name
    (``"csv"``, ``"json"``, ``"parquet"``, ``"text"``, ``"arrow"``) with ``data_files=`` as for
    ``datasets.load_dataset`` — a dict names the splits, a single file or list is ``"test"``.
    ``splits`` keeps (a list) or renames (``{"validation": "test"}``) splits. ClassLabel
    features give the class / tag names. ``cache_dir`` is where ``load_dataset`` keeps its
    Arrow copy of data files (default: datasets' own cache).
    """
    source = repr(data) if not isinstance(data, (str, os.PathLike)) else str(data)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise TaskError("Hugging Face datasets support needs the datasets package: pip install datasets") from None
    if isinstance(data, str) and data in FILE_BUILDERS:
        if data_files is None:
            raise TaskError(f"from_hf_dataset({data!r}) needs data_files= (a path, a list, or {{split: path}})")
        try:
            loaded = datasets.load_dataset(data, data_files=_abs_files(data_files), cache_dir=_opt_str(cache_dir))
        except Exception as exc:
            raise TaskError(
                f"datasets.load_dataset({data!r}, data_files={data_files!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        if (
            not isinstance(data_files, Mapping)
            and isinstance(loaded, datasets.DatasetDict)
            and list(loaded) == ["train"]
        ):
            loaded = datasets.DatasetDict({"test": loaded["train"]})  # one unnamed file is what we evaluate
        source = f"{data} files {data_files!r}"
        data = loaded
    elif isinstance(data, (str, os.PathLike)):
        folder = Path(data)
        if not folder.is_dir():
            raise TaskError(
                f"{folder} is not a folder saved with Dataset.save_to_disk; for data files use "
                "from_hf_dataset('csv'|'json'|'parquet', data_files=...), for a hub id from_hub(...)"
            )
        try:
            data = datasets.load_from_disk(str(folder))
        except Exception as exc:
            raise TaskError(f"datasets.load_from_disk({str(folder)!r}) failed: {type(exc).__name__}: {exc}") from exc
    parts = _split_by_column(_as_parts(data, source, splits), split_column)
    return build_task(parts, kind=kind, **spec)


def _opt_str(path: PathLike | None) -> str | None:
    return None if path is None else str(path)


def _abs_files(data_files: Any) -> Any:
    if isinstance(data_files, Mapping):
        return {k: _abs_files(v) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [str(Path(p).resolve()) for p in data_files]
    return str(Path(data_files).resolve())


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Force datasets / huggingface_hub offline for one call (their flags are read at import)."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def load_hub_dataset(
    repo_id: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    allow_download: bool = False,
    datasets_cache_dir: PathLike | None = None,
) -> Any:
    """A hub dataset, offline first: the hub snapshot cache, then datasets' own cache, then (if allowed) the network.

    ``cache_dir`` is the hub cache (default ``$HF_HUB_CACHE``), ``datasets_cache_dir`` datasets'
    Arrow cache (default ``$HF_DATASETS_CACHE``).
    """
    import datasets

    ds_cache = _opt_str(datasets_cache_dir)

    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id, repo_type="dataset", revision=revision, local_files_only=True,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )  # fmt: skip
    except Exception:
        folder = None
    if folder is not None:
        try:
            return datasets.load_dataset(folder, name=name, cache_dir=ds_cache)
        except Exception as exc:
            raise TaskError(
                f"dataset {repo_id!r} is cached at {folder} but does not load: {type(exc).__name__}: {exc}"
            ) from exc
    try:
        with _hub_offline():
            return datasets.load_dataset(repo_id, name=name, revision=revision, cache_dir=ds_cache)
    except Exception:
        pass
    if allow_download:
        try:
            return datasets.load_dataset(repo_id, name=name, revision=revision, cache_dir=ds_cache)
        except Exception as exc:
            raise TaskError(f"dataset {repo_id!r} could not be downloaded: {type(exc).__name__}: {exc}") from exc
    where = str(cache_dir) if cache_dir is not None else "the Hugging Face caches ($HF_HUB_CACHE, $HF_DATASETS_CACHE)"
    raise TaskError(
        f"dataset {repo_id!r}{f' (config {name!r})' if name else ''} is not cached locally (looked in {where}); "
        f"fetch it once where the network is reachable (`hf download {repo_id} --repo-type dataset`), "
        "or pass allow_download=True"
    )


def from_hub(
    repo_id: str,
    *,
    kind: str = "text",
    name: str | None = None,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    allow_download: bool = False,
    datasets_cache_dir: PathLike | None = None,
    splits: Sequence[str] | Mapping[str, str] | None = None,
    split_column: str | None = None,
    **spec: Any,
) -> Any:
    """A task from a Hugging Face hub dataset id, offline first (a clear error when it is not cached).

    Looks in the hub cache (``cache_dir``, default ``$HF_HUB_CACHE``: what ``hf download`` and
    ``snapshot_download`` fill), then in datasets' cache of earlier ``load_dataset`` calls, and
    downloads only with ``allow_download=True``.
    """
    data = load_hub_dataset(
        repo_id, name=name, revision=revision, cache_dir=cache_dir, allow_download=allow_download,
        datasets_cache_dir=datasets_cache_dir,
    )  # fmt: skip
    parts = _split_by_column(_as_parts(data, repo_id, splits), split_column)
    return build_task(parts, kind=kind, **spec)
