"""Data tasks declared without Python, and the task listing.

Three spellings, one validation:

- a table in ``pyproject.toml``::

      [tool.pytest_forgetting.tasks.news]
      path = "data/news_test.csv"     # or { train = "data/train.csv", test = "data/test.csv" }
      format = "csv"                  # optional: csv | jsonl | conll | parquet | datasets | hub (else from the path)
      text = "body"                   # the loader's arguments: text, label, id, class_names, split_column, ...
      label = "topic"

- ``--forgetting-task NAME=FORMAT:PATH[,key=value...]`` (repeatable), e.g.
  ``--forgetting-task news=csv:data/news_test.csv,text=body,label=topic``; ``FORMAT:`` may be left
  out when the path's suffix says it, and list values are written with ``|`` (``class_names=neg|pos``);
- a data file as the task name: ``--retains data/news_test.csv:0.02`` or
  ``retains(task="data/news.jsonl", ...)`` reads a file whose columns have the default names
  ``text``, ``label`` and (optional) ``id``.

Paths are relative to the folder of ``pyproject.toml`` (tables) or to the invocation directory
(command line and data-file names). Keys are checked against the loader's and the task's own
parameters, paths and CSV / JSONL column names are checked when pytest starts: a mistake is one
usage error line (exit 4) before any model loads. The data itself is read when a check first
needs the task.

This module imports only the standard library at import time: the plugin calls it in every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError

TABLE = "tool.pytest_forgetting.tasks"
#: data formats and the loader that reads each (pytest_forgetting.tasks.loaders)
FORMATS = {
    "csv": "from_csv",
    "jsonl": "from_jsonl",
    "conll": "from_conll",
    "parquet": "from_hf_dataset",
    "datasets": "from_hf_dataset",
    "hub": "from_hub",
}
SUFFIXES = {
    ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".conll": "conll", ".conllu": "conll", ".iob": "conll", ".bio": "conll", ".parquet": "parquet",
}  # fmt: skip
#: keys whose value is a list (written ``a|b|c`` on the command line)
LIST_KEYS = frozenset({"class_names", "tag_names", "columns", "splits"})
#: the column arguments of loaders.build_task that matter for each task kind
_KIND_KEYS = {
    "text": ("text", "label", "class_names"), "embedding": ("text", "label", "class_names"),
    "image": ("image", "label", "class_names"), "token": ("tokens", "tags", "tag_names"),
}  # fmt: skip
#: loader parameters that are not the user's to set here (the path is ``path``)
_INTERNAL = frozenset({"path", "data", "repo_id", "parts", "spec", "options", "data_files", "self"})

# where relative data-file task names are looked up: the invocation directory, then the rootdir
_base_dirs: tuple[Path, ...] = ()
# names this run registered (removed again at unconfigure: pytester runs share the registry)
_registered: list[str] = []


class TaskSpec(NamedTuple):  # a NamedTuple, not a dataclass: this module is imported in every run
    """A declared data task: which loader reads which path with which arguments."""

    name: str
    format: str
    path: Any  # an absolute path, {split: absolute path}, or a hub id
    options: dict[str, Any]
    where: str = ""

    @property
    def origin(self) -> str:
        return self.where or f"data file {self.path}"

    def build(self) -> Any:
        """The task (reads the data)."""
        from . import loaders

        loader = getattr(loaders, FORMATS[self.format])
        opts = dict(self.options)
        if self.format == "parquet":
            return loader("parquet", data_files=self.path, **opts)
        if self.format == "csv" and "delimiter" not in opts and _suffix(self.path) == ".tsv":
            opts["delimiter"] = "\t"
        return loader(self.path, **opts)


# -- parsing ------------------------------------------------------------------------------------


def _scalar(text: str) -> Any:
    from ..declarations import _scalar as scalar

    return scalar(text)


def parse_cli(spec: str, base_dir: Path) -> TaskSpec:
    """``NAME=[FORMAT:]PATH[,key=value...]`` from ``--forgetting-task``."""
    where = f"--forgetting-task {spec!r}"
    head, *rest = [p.strip() for p in spec.split(",")]
    name, eq, source = head.partition("=")
    name, source = name.strip(), source.strip()
    if not eq or not name or not source:
        raise ConfigError(
            f"{where}: expected NAME=FORMAT:PATH[,key=value...], "
            "e.g. --forgetting-task news=csv:data/news.csv,text=body,label=topic"
        )
    fmt, sep, path = source.partition(":")
    if not sep or fmt.strip().lower() not in FORMATS:  # no format (or a drive letter): the suffix decides
        if sep and len(fmt) > 1 and not os.path.exists(source):
            from .._util import suggest

            raise ConfigError(
                f"{where}: unknown format {fmt!r}{suggest(fmt, list(FORMATS))}; expected one of {', '.join(FORMATS)}"
            )
        fmt, path = "", source
    options: dict[str, Any] = {}
    for part in rest:
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"{where}: {part!r} is not key=value")
        if key in options:
            raise ConfigError(f"{where}: {key!r} given twice")
        options[key] = [v.strip() for v in val.split("|") if v.strip()] if key in LIST_KEYS else _scalar(val)
    return _spec(name, fmt.strip().lower() or None, path.strip(), options, where, base_dir)


def parse_table(name: str, table: Any, where: str, base_dir: Path) -> TaskSpec:
    """One ``[tool.pytest_forgetting.tasks.NAME]`` table."""
    if not isinstance(table, dict):
        raise ConfigError(f'{where}: expected a table with path = "..." and the loader\'s arguments, got {table!r}')
    options = dict(table)
    path = options.pop("path", None)
    fmt = options.pop("format", None)
    if fmt is not None and not isinstance(fmt, str):
        raise ConfigError(f"{where}: format={fmt!r} must be one of {', '.join(FORMATS)}")
    if path is None:
        raise ConfigError(
            f'{where}: needs path = "data/file.csv" (or {{ test = "..." }} per split; a hub id for format = "hub")'
        )
    return _spec(name, fmt.lower() if fmt else None, path, options, where, base_dir)


def _spec(name: str, fmt: str | None, path: Any, options: dict[str, Any], where: str, base_dir: Path) -> TaskSpec:
    from .._util import suggest

    if not name or any(c in name for c in ", "):
        raise ConfigError(f"{where}: task name {name!r} must be non-empty, without spaces or commas")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(
            f"{where}: unknown format {fmt!r}{suggest(fmt, list(FORMATS))}; expected one of {', '.join(FORMATS)}"
        )
    if isinstance(path, Mapping):
        if not path or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in path.items()):
            raise ConfigError(f'{where}: path = {{ split = "file", ... }} needs a file per split, got {dict(path)!r}')
    elif not isinstance(path, str) or not path:
        raise ConfigError(
            f"{where}: path={path!r} must be a file, a folder, {{ split = file }} or (format hub) a hub id"
        )
    if fmt is None:
        fmt = _infer_format(path, base_dir)
        if fmt is None:
            raise ConfigError(
                f"{where}: cannot tell the format of {_first(path)!r} from its name; give it "
                f'(format = "csv" in the table, csv:PATH on the command line): one of {", ".join(FORMATS)}'
            )
    if fmt != "hub":
        path = (
            {k: str(_resolve(v, base_dir)) for k, v in path.items()}
            if isinstance(path, Mapping)
            else str(_resolve(path, base_dir))
        )
        for p in path.values() if isinstance(path, dict) else [path]:
            _check_exists(Path(p), fmt, where)
    elif isinstance(path, Mapping):
        raise ConfigError(f"{where}: a hub dataset is one id (org/name); choose splits with splits = [...]")
    spec = TaskSpec(name, fmt, path, _check_options(fmt, options, where), where)
    _check_columns(spec)
    return spec


def _first(path: Any) -> str:
    return next(iter(path.values())) if isinstance(path, Mapping) else str(path)


def _suffix(path: Any) -> str:
    return Path(_first(path)).suffix.lower()


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base_dir / p)


def _infer_format(path: Any, base_dir: Path) -> str | None:
    fmt = SUFFIXES.get(_suffix(path))
    if fmt is None and not isinstance(path, Mapping) and _resolve(path, base_dir).is_dir():
        return "datasets"
    return fmt


def _check_exists(path: Path, fmt: str, where: str) -> None:
    if fmt == "datasets":
        if not path.is_dir():
            raise ConfigError(
                f"{where}: {path} is not a folder written by Dataset.save_to_disk (or DatasetDict.save_to_disk)"
            )
    elif not path.is_file():
        close = _close_file(path)
        hint = f"; did you mean {path.parent / close}?" if close else ""
        raise ConfigError(f"{where}: data file {path} does not exist{hint}")


def _close_file(path: Path) -> str | None:
    from .._util import close_matches

    try:
        names = os.listdir(path.parent)
    except OSError:
        return None
    close = close_matches(path.name, names)
    return close[0] if close else None


def allowed_keys(fmt: str, kind: str = "text") -> list[str]:
    """The keys a declaration of ``fmt`` may set: the loader's parameters and the task class's options."""
    import inspect

    from . import loaders

    params: set[str] = set()

    def add(fn: Callable[..., Any], keyword_only: bool = False) -> None:
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in _INTERNAL:
                continue
            if keyword_only and p.kind is not p.KEYWORD_ONLY:
                continue
            params.add(p.name)

    add(getattr(loaders, FORMATS[fmt]))
    if fmt == "conll":
        from .token import TokenClassificationTask

        add(TokenClassificationTask.__init__)
        return sorted(params - {"tokens", "tags", "ids", "splits", "columns"})
    add(_task_class(kind).__init__, keyword_only=True)
    params.discard("splits")  # the task's own split mapping: the loader's splits= (datasets, hub) stays
    add(getattr(loaders, FORMATS[fmt]))
    return sorted(params | {"kind", "id", "columns", *_KIND_KEYS.get(kind, _KIND_KEYS["text"])})


def _task_class(kind: str) -> Any:
    from . import loaders

    if kind == "image":
        from .classification import ImageClassificationTask

        return ImageClassificationTask
    if kind == "embedding":
        from .embedding import EmbeddingProbeTask

        return EmbeddingProbeTask
    if kind == "token":
        from .token import TokenClassificationTask

        return TokenClassificationTask
    if kind != "text":
        from .._util import suggest

        raise ConfigError(
            f"kind={kind!r}: expected one of {', '.join(loaders.KINDS)}{suggest(str(kind), loaders.KINDS)}"
        )
    from .classification import TextClassificationTask

    return TextClassificationTask


def _check_options(fmt: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    from .._util import suggest

    kind = options.get("kind", "text")
    try:
        allowed = allowed_keys(fmt, str(kind))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r} for a {fmt} task{suggest(key, allowed)}; "
                f"allowed: path, format, {', '.join(allowed)}"
            )
        if (
            key in LIST_KEYS
            and key != "splits"
            and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise ConfigError(
                f'{where}: {key} must be a list of names, e.g. {key} = ["neg", "pos"] (neg|pos on the command line)'
            )
    return options


def _check_columns(spec: TaskSpec) -> None:
    """The named columns exist in a CSV header / the first JSONL record (other formats: when built)."""
    if spec.format not in ("csv", "jsonl"):
        return
    kind = spec.options.get("kind", "text")
    wanted = {"label": spec.options.get("label", "label")}
    if kind == "token":
        wanted = {"tokens": spec.options.get("tokens", "tokens")}
        if "tags" in spec.options:
            wanted["tags"] = spec.options["tags"]
    else:
        key = "image" if kind == "image" else "text"
        wanted[key] = spec.options.get(key, key)
    for key in ("id", "split_column"):
        if spec.options.get(key):
            wanted[key] = spec.options[key]
    for p in spec.path.values() if isinstance(spec.path, dict) else [spec.path]:
        columns = _header(Path(p), spec.format, spec.options)
        if columns is None:
            continue
        for key, column in wanted.items():
            if column not in columns:
                from .._util import suggest

                raise ConfigError(
                    f"{spec.where or spec.name}: {p} has no column {column!r}{suggest(str(column), columns)} "
                    f"(columns: {', '.join(columns) or '(none)'}); name it with {key}=..."
                )


def _header(path: Path, fmt: str, options: Mapping[str, Any]) -> list[str] | None:
    import csv
    import json

    encoding = str(options.get("encoding", "utf-8"))
    try:
        with open(path, newline="", encoding=encoding) as fh:
            if fmt == "csv":
                delimiter = str(options.get("delimiter", "\t" if path.suffix.lower() == ".tsv" else ","))
                return next(csv.reader(fh, delimiter=delimiter), [])
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    return list(obj) if isinstance(obj, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # the loader reports an unreadable file with its line number when it is built
    return []


# -- data files as task names -------------------------------------------------------------------


def looks_like_data_path(name: str) -> bool:
    return Path(name).suffix.lower() in SUFFIXES or "/" in name or os.sep in name


def path_task(name: str) -> TaskSpec | None:
    """The task a data-file name stands for (default columns), or None when ``name`` is no data path.

    Raises ConfigError for a name that is clearly meant as a file (a data suffix) but does not exist.
    """
    if not looks_like_data_path(name):
        return None
    dirs = _base_dirs or (Path.cwd(),)
    for base in dirs:
        candidate = _resolve(name, base)
        if candidate.is_file() and candidate.suffix.lower() in SUFFIXES:
            return TaskSpec(name, SUFFIXES[candidate.suffix.lower()], str(candidate), {}, f"data file {candidate}")
        if candidate.is_dir() and any(
            (candidate / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            return TaskSpec(name, "datasets", str(candidate), {}, f"datasets folder {candidate}")
    if Path(name).suffix.lower() in SUFFIXES:
        looked = ", ".join(str(d) for d in dict.fromkeys(dirs))
        raise ConfigError(
            f"task {name!r} names a data file, but there is none (looked in {looked}); "
            "fix the path, or register a task of that name"
        )
    return None


# -- registration (pytest_configure) ------------------------------------------------------------


def declared_specs(config: Any) -> list[TaskSpec]:
    """The tasks of ``--forgetting-task`` and ``[tool.pytest_forgetting.tasks]``; ConfigError on a mistake."""
    specs: list[TaskSpec] = []
    invocation = Path(config.invocation_params.dir)
    for raw in config.getoption("forgetting_tasks", None) or ():
        specs.append(parse_cli(str(raw), invocation))
    pyproject = Path(config.rootpath) / "pyproject.toml"
    specs.extend(load_pyproject(pyproject))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"{spec.where}: task {spec.name!r} is already declared by {seen[spec.name]}")
        seen[spec.name] = spec.where
    return specs


def load_pyproject(path: Path) -> list[TaskSpec]:
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    if b"pytest_forgetting" not in raw or b"tasks" not in raw:
        return []  # most projects: no TOML parse at all
    from ..declarations import _toml

    toml = _toml()
    try:
        data = toml.loads(raw.decode("utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read TOML: {exc}") from None
    tables = data.get("tool", {}).get("pytest_forgetting", {})
    tables = tables.get("tasks") if isinstance(tables, dict) else None
    if tables is None:
        return []
    if not isinstance(tables, dict):
        raise ConfigError(
            f'{path.name} [{TABLE}] must be a table of tables, e.g. [{TABLE}.news] path = "data/news.csv"'
        )
    return [parse_table(name, table, f"{path.name} [{TABLE}.{name}]", path.parent) for name, table in tables.items()]


class _Unregister:
    """Removes this run's declared tasks at the end (in-process pytester runs share the registry)."""

    def pytest_unconfigure(self, config: Any) -> None:
        from ..registry import REGISTRY

        while _registered:
            REGISTRY.unregister(_registered.pop())


def configure(config: Any) -> None:
    """Register the declared tasks of this run (pytest_configure); a mistake is a usage error."""
    import pytest

    global _base_dirs
    _base_dirs = tuple(dict.fromkeys((Path(config.invocation_params.dir), Path(config.rootpath))))
    if not config.pluginmanager.has_plugin("forgetting-declared-tasks"):
        config.pluginmanager.register(_Unregister(), "forgetting-declared-tasks")
    try:
        specs = declared_specs(config)
        for spec in specs:
            register(spec)
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-forgetting: {exc}") from None


def register(spec: TaskSpec) -> None:
    from ..registry import REGISTRY

    REGISTRY.register(spec.name, spec.build, origin=spec.origin)
    _registered.append(spec.name)


# -- pytest --forgetting-list-tasks -------------------------------------------------------------


class TaskInfo(NamedTuple):
    name: str
    kind: str
    metrics: list[str]
    splits: dict[str, int]
    origin: str
    error: str = ""


def describe_tasks() -> list[TaskInfo]:
    """Every registered task, built, with its metrics (default first), split sizes and origin."""
    from ..errors import ForgettingError
    from ..registry import REGISTRY

    out = []
    for name in REGISTRY.names():
        entry = REGISTRY.entries[name]
        try:
            task = REGISTRY.get(name)
        except ForgettingError as exc:
            out.append(TaskInfo(name, "", [], {}, entry.origin, str(exc)))
            continue
        metrics = [task.default_metric] + sorted(m for m in task.metrics if m != task.default_metric)
        out.append(
            TaskInfo(name, type(task).__name__, metrics, {s: task.size(s) for s in task.split_names()}, entry.origin)
        )
    return out


def format_tasks(infos: list[TaskInfo]) -> list[str]:
    rows = [("task", "class", "metrics (default first)", "splits (examples)", "from")]
    for t in infos:
        if t.error:
            rows.append((t.name, "-", "-", f"unavailable: {t.error}", t.origin))
        else:
            rows.append(
                (
                    t.name,
                    t.kind,
                    _metric_list(t.metrics),
                    ", ".join(f"{s} {n:,}" for s, n in t.splits.items()),
                    t.origin,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"forgetting: {len(infos)} tasks"]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    return lines


def _metric_list(metrics: list[str]) -> str:
    """Metric names, with per-type families (``f1:person``, ``f1:geo-loc``...) shown once as ``f1:<type> (n)``."""
    out: list[str] = []
    families: dict[str, int] = {}
    for m in metrics:
        head, sep, _ = m.partition(":")
        if sep:
            if head not in families:
                out.append(head + ":")
            families[head] = families.get(head, 0) + 1
        else:
            out.append(m)
    return ", ".join(f"{m}<type> ({families[m[:-1]]})" if m.endswith(":") else m for m in out)


def list_tasks_main(config: Any) -> int:
    """``pytest --forgetting-list-tasks``: configure (conftests and declared tasks), print, exit 0."""
    from _pytest.main import wrap_session

    def show(config: Any, session: Any) -> int:
        from _pytest.config import create_terminal_writer

        tw = create_terminal_writer(config)
        for line in format_tasks(describe_tasks()):
            tw.line(line)
        return 0

    return wrap_session(config, show)
