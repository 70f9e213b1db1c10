"""Command-line options, ini keys and environment variables, resolved once into ``Settings``.

Precedence is CLI > environment > ini > default. Every value remembers where it came from,
so a bad value is a usage error naming its source, and the report header shows which
source won. Settings are plain, serialisable values (pytest-xdist ships options to workers).
The options themselves (``Option``, ``OPTIONS``) are the table in ``option_table.py``, re-exported here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .option_table import INCONCLUSIVE_ACTIONS as INCONCLUSIVE_ACTIONS
from .option_table import OPTIONS as OPTIONS
from .option_table import Option as Option

GROUP = "forgetting"


@dataclass(frozen=True)
class Settings:
    base_ckpt: str | None = None
    tuned_ckpts: tuple[str, ...] = ()
    model_factory: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int | str = 64
    alpha: float = 0.05
    inconclusive: str = "fail"
    limit: int | None = None
    seed: int = 0
    json_path: str | None = None
    markdown_path: str | None = None
    plot_path: str | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_download: bool = False
    early_stop: bool = False
    representation_drift: bool = False  # linear CKA per layer (drift.representation_cka)
    device_map: str | None = None  # a strategy name or the absolute path of a JSON file
    max_memory: str | None = None  # "cpu=40GiB,0=10GiB" (validated)
    progress: str = "auto"  # auto | on | off
    distributed: bool = False  # forced on; else on under a launcher with WORLD_SIZE > 1
    retains: tuple[str, ...] = ()
    improves: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # --forgetting-task declarations (registered by tasks.declared)
    lm_eval_include: tuple[str, ...] = ()  # absolute folders of lm-eval YAML tasks
    lm_eval_fewshot: int | None = None
    lm_eval_chat_template: bool = False
    list_tasks: bool = False
    rootdir: str = "."
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_options(parser: Any) -> None:
    group = parser.getgroup(GROUP, "forgetting: gate fine-tuned checkpoints on what the base could do")
    for opt in OPTIONS:
        kwargs: dict[str, Any] = {"dest": "forgetting_" + opt.name, "help": opt.help}
        if opt.kind == "bool":
            kwargs.update(action="store_true", default=None)
        elif opt.kind in ("paths", "list"):
            kwargs.update(action="append", default=None, metavar=opt.metavar)
        else:
            kwargs.update(default=None, metavar=opt.metavar or opt.name.upper())
            if opt.choices:
                kwargs["choices"] = list(opt.choices)
        group.addoption(opt.cli, **kwargs)
        if opt.ini:
            ini_type = {"bool": "bool", "paths": "linelist"}.get(opt.kind, "string")
            parser.addini(opt.ini, opt.help + (f" (or ${opt.env})" if opt.env else ""), type=ini_type, default=None)


def _raw_values(
    opt: Option, getoption: Callable[[str], Any], getini: Callable[[str], Any], environ: dict[str, str]
) -> tuple[Any, str]:
    value = getoption("forgetting_" + opt.name)
    if value not in (None, []):
        return value, "cli"
    if opt.env and environ.get(opt.env, "").strip():
        raw = environ[opt.env].strip()
        return (raw.split(os.pathsep) if opt.kind == "paths" else raw), "env"
    if opt.ini:
        try:
            value = getini(opt.ini)
        except ValueError:
            value = None
        if value not in (None, "", []):
            return value, "ini"
    return opt.default, "default"


def _where(opt: Option, source: str) -> str:
    return {"cli": opt.cli, "env": f"${opt.env}", "ini": f"ini key {opt.ini}", "default": f"default of {opt.cli}"}[
        source
    ]


def _parse_int(opt: Option, source: str, value: Any, minimum: int) -> int:
    try:
        out = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{_where(opt, source)}={value!r}: expected an integer") from None
    if out < minimum:
        raise ConfigError(f"{_where(opt, source)}={value!r}: must be >= {minimum}")
    return out


def resolve(
    getoption: Callable[[str], Any],
    getini: Callable[[str], Any],
    *,
    environ: dict[str, str] | None = None,
    invocation_dir: str | Path = ".",
    ini_dir: str | Path | None = None,
    rootdir: str | Path = ".",
) -> Settings:
    """Resolve every option into one frozen Settings; ConfigError names the source of a bad value."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw, source = _raw_values(opt, getoption, getini, environ)
        sources[opt.name] = source
        base_dir = Path(ini_dir or rootdir) if source == "ini" else Path(invocation_dir)
        if opt.kind == "path" and raw is not None:
            raw = _resolve_ref(str(raw), base_dir)
        elif opt.kind == "paths":
            items = [str(x).strip() for x in (raw or ()) if str(x).strip()]
            raw = tuple(_resolve_ref(x, base_dir) for x in items)
        elif opt.kind == "list":
            raw = tuple(str(x) for x in (raw or ()))
        elif opt.kind == "bool":
            raw = bool(raw) if not isinstance(raw, str) else raw.strip().lower() in ("1", "true", "yes", "on")
        if opt.choices and raw is not None and raw not in opt.choices:
            raise ConfigError(f"{_where(opt, source)}={raw!r}: expected one of {', '.join(opt.choices)}")
        values[opt.name] = raw

    # typed values
    opt_by_name = {o.name: o for o in OPTIONS}
    bs = str(values["batch_size"]).strip().lower()
    values["batch_size"] = (
        "auto" if bs == "auto" else _parse_int(opt_by_name["batch_size"], sources["batch_size"], bs, 1)
    )
    try:
        alpha = float(values["alpha"])
    except (TypeError, ValueError):
        alpha = -1.0
    if not 0.0 < alpha < 0.5:
        raise ConfigError(
            f"{_where(opt_by_name['alpha'], sources['alpha'])}={values['alpha']!r}: "
            "alpha must be a number in (0, 0.5), e.g. 0.05"
        )
    values["alpha"] = alpha
    if values["limit"] is not None:
        values["limit"] = _parse_int(opt_by_name["limit"], sources["limit"], values["limit"], 1)
    values["seed"] = _parse_int(opt_by_name["seed"], sources["seed"], values["seed"], 0)
    if values["lm_eval_fewshot"] is not None:
        values["lm_eval_fewshot"] = _parse_int(
            opt_by_name["lm_eval_fewshot"], sources["lm_eval_fewshot"], values["lm_eval_fewshot"], 0
        )
    device = str(values["device"]).strip().lower()
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(
            f"{_where(opt_by_name['device'], sources['device'])}={values['device']!r}: "
            "expected auto, cpu, cuda or cuda:N"
        )
    values["device"] = device
    factory = values["model_factory"]
    if factory is not None and (factory.count(":") != 1 or not all(factory.split(":"))):
        raise ConfigError(
            f"{_where(opt_by_name['model_factory'], sources['model_factory'])}={factory!r}: "
            "expected module:callable, e.g. mymodels:build_cnn"
        )
    if values["cache_dir"] is None:  # outside the checkout: a pull request cannot ship entries
        values["cache_dir"] = str(default_cache_dir(environ))
    _resolve_device_map(values, sources, opt_by_name, Path(ini_dir or rootdir), Path(invocation_dir))
    return Settings(**values, rootdir=str(rootdir), sources=sources)


def default_cache_dir(environ: dict[str, str] | None = None, platform: str | None = None) -> Path:
    """The platform's user cache folder for pytest-forgetting (stdlib only).

    Linux and other POSIX systems: ``$XDG_CACHE_HOME/pytest-forgetting`` (an absolute
    ``$XDG_CACHE_HOME`` only, as the XDG specification says), else ``~/.cache/pytest-forgetting``;
    macOS: ``~/Library/Caches/pytest-forgetting``; Windows: ``%LOCALAPPDATA%\\pytest-forgetting``.
    """
    import sys

    env = os.environ if environ is None else environ
    platform = platform or sys.platform
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if platform.startswith("win"):
        local = env.get("LOCALAPPDATA", "").strip()
        base = Path(local) if local and Path(local).is_absolute() else home / "AppData" / "Local"
    elif platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        xdg = env.get("XDG_CACHE_HOME", "").strip()
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "pytest-forgetting"


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_MAP_USAGE = "expected auto, balanced, balanced_low_0, sequential or a JSON file mapping module names to devices"
_DEVICE = re.compile(r"cpu|disk|mps|(?:cuda|xpu|npu|mlu|hpu)(?::\d+)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?")
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
}


def _resolve_device_map(
    values: dict[str, Any], sources: dict[str, str], opts: dict[str, Option], ini_base: Path, cli_base: Path
) -> None:
    """Validate --forgetting-device-map / --forgetting-max-memory; a JSON map becomes an absolute path."""
    raw = values["device_map"]
    opt, source = opts["device_map"], sources["device_map"]
    if raw is not None:
        spec = str(raw).strip()
        if spec.lower() in DEVICE_MAP_STRATEGIES:
            spec = spec.lower()
        else:
            path = Path(spec).expanduser()
            if not path.is_absolute():
                path = (ini_base if source == "ini" else cli_base) / path
            spec = str(path.absolute())
        try:
            parse_device_map(spec)
        except ConfigError as exc:
            raise ConfigError(f"{_where(opt, source)}={raw!r}: {exc}") from None
        values["device_map"] = spec
    mem_opt, mem_source = opts["max_memory"], sources["max_memory"]
    if values["max_memory"] is not None:
        mem = str(values["max_memory"]).strip()
        try:
            parse_max_memory(mem)
        except ConfigError as exc:
            raise ConfigError(f"{_where(mem_opt, mem_source)}={values['max_memory']!r}: {exc}") from None
        if values["device_map"] not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(
                f"{_where(mem_opt, mem_source)}={values['max_memory']!r}: only applies with --forgetting-device-map "
                f"{', '.join(DEVICE_MAP_STRATEGIES)} (an explicit JSON map already places every module)"
            )
        values["max_memory"] = mem


def parse_device_map(spec: str) -> str | dict[str, int | str]:
    """A strategy name, or the module -> device dict of a JSON file (validated; ConfigError says what is wrong)."""
    if spec in DEVICE_MAP_STRATEGIES:
        return spec
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{_DEVICE_MAP_USAGE}; no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read device map {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"device map {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    example = '{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}'
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"device map {path} must be a non-empty JSON object mapping module names to devices, e.g. {example}"
        )
    out: dict[str, int | str] = {}
    for module, device in data.items():
        if isinstance(device, bool) or not (
            (isinstance(device, int) and device >= 0)
            or (isinstance(device, str) and _DEVICE.fullmatch(device.strip().lower()))
        ):
            raise ConfigError(
                f"device map {path}: module {module!r} -> {device!r} is not a device "
                "(cpu, disk, a GPU index N or cuda:N)"
            )
        out[module] = device if isinstance(device, int) else device.strip().lower()
    return out


def parse_max_memory(spec: str) -> dict[int | str, int]:
    """``cpu=40GiB,0=10GiB`` -> {"cpu": 42949672960, 0: 10737418240} (bytes; accelerate's max_memory)."""
    usage = (
        "expected DEVICE=SIZE pairs separated by commas, e.g. cpu=40GiB,0=10GiB (devices: cpu, disk, mps, N, cuda:N)"
    )
    out: dict[int | str, int] = {}
    for item in spec.split(","):
        key, sep, size = (part.strip().lower() for part in item.partition("="))
        match = _SIZE.fullmatch(size)
        if not sep or not key or match is None:
            raise ConfigError(f"{item.strip()!r}: {usage}")
        if key.isdigit():
            dev: int | str = int(key)
        elif key.startswith("cuda:") and key[5:].isdigit():
            dev = int(key[5:])
        elif key in ("cpu", "disk", "mps"):
            dev = key
        else:
            raise ConfigError(f"{item.strip()!r}: unknown device {key!r}; {usage}")
        if dev in out:
            raise ConfigError(f"{item.strip()!r}: device {key!r} given twice")
        out[dev] = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    return out


def _resolve_ref(ref: str, base_dir: Path) -> str:
    """Paths become absolute against where they were given; hub ids (org/name, not on disk) stay as they are."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = base_dir / p
    if candidate.exists() or ref.startswith((".", "~")) or p.suffix or not _looks_like_hub_id(ref):
        return str(candidate.resolve()) if candidate.exists() else str(candidate.absolute())
    return ref


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and all(c.isalnum() or c in "-_." for c in ref.replace("/", ""))


def candidate_name(ref: str, all_refs: tuple[str, ...]) -> str:
    """A short, unique, readable name for a tuned checkpoint (its last path parts)."""
    from pathlib import PurePath

    parts = PurePath(ref).parts
    for depth in range(1, len(parts) + 1):
        name = "/".join(parts[-depth:])
        others = ["/".join(PurePath(r).parts[-depth:]) for r in all_refs if r != ref]
        if name not in others:
            return name.removesuffix(".safetensors")
    return ref
