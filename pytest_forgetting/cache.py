"""On-disk cache of base-model evaluations (and of tokenised task inputs).

An entry is the per-example outputs of one evaluation, an uncompressed ``.npz`` written and read by
this module alone: the base model's (``<hash>.npz``) or a tuned model's (``tuned-<hash>.npz``, keyed
by its own fingerprint and its base's, so that another pytest-xdist worker or a rerun reuses it).
Its file name is a hash of its key, and the entry *records* the whole key (the
JSON of everything that decides the base's outputs: checkpoint fingerprint, model-factory source,
task class, version and data fingerprint, split, subsample, device, dtype, batch size, library and
plugin versions); a read compares the recorded key with the expected one, so an entry renamed or
written for another key is a miss. Nothing in an entry is trusted before it is checked:

* the file is opened without following a symbolic link (``O_NOFOLLOW``), must be a regular file
  owned by the running user, and is refused before anything is inflated when the sizes its zip
  directory declares exceed a cap derived from the number of examples expected;
* every array header is parsed and checked against its member's size; no pickles, no objects;
* the caller checks ids, shapes and outputs (:meth:`EvalCache.load`): a damaged entry is a miss.

The folder itself must be a real folder (not a symbolic link) owned by the running user and not
writable by others; inside the rootdir it must not hold files tracked by git (a pull request could
ship a forged entry). A folder that fails these checks, or that turns out read-only or full, gives
one :class:`CacheWarning` and the run goes on without the cache.

Writes go to a temporary file with an unpredictable name created with ``O_EXCL | O_NOFOLLOW`` and
are renamed into place (``os.replace`` replaces a planted symbolic link, never writes through it),
so an interrupted run leaves no partial entry; a file lock per key (itself refused when it is a
symbolic link) makes concurrent pytest-xdist workers compute an entry once.

The same folder keeps tokenised inputs (``prepared-<key>.npz``, the same format and checks), the
per-file checkpoint hashes of :class:`pytest_forgetting.checkpoints.FileDigests` and accelerate's
disk-offload folders (``offload/``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._util import atomic_write, create_temp
from .tasks.base import EvalResult

#: bump when the evaluation loop changes what it stores (2: entries record and verify their key)
EVAL_VERSION = "2"
#: per-example budget of an evaluation entry (outputs are a few numbers per example) and a fixed part
EVAL_BYTES_PER_EXAMPLE = 256 * 1024
EVAL_BYTES_FIXED = 16 * 2**20
#: tokenised inputs are larger (token ids, masks, offsets per example)
PREPARED_BYTES_PER_EXAMPLE = 2 * 2**20
PREPARED_BYTES_FIXED = 64 * 2**20
MAX_MEMBERS = 4096
GIT_TIMEOUT_S = 10.0

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DTYPE_KINDS = "biufcUSmM"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: POSIX: every operation is relative to the folder's descriptor, opened once after its checks
_DIR_FD = all(f in os.supports_dir_fd for f in (os.open, os.stat, os.unlink, os.rename)) and hasattr(os, "O_DIRECTORY")


class CacheWarning(UserWarning):
    """The cache folder cannot be used safely: the run goes on without it."""


class _Miss(Exception):
    """An entry that is absent, damaged, foreign or too large: recomputed, never an error."""


def key_json(parts: Mapping[str, Any]) -> str:
    """The canonical JSON of a key: what an entry records and what its file name hashes."""
    return json.dumps({"eval_version": EVAL_VERSION, **parts}, sort_keys=True, default=str, separators=(",", ":"))


def cache_key(**parts: Any) -> str:
    """File-name part of the entry for these key parts (32 hex digits)."""
    return hashlib.sha256(key_json(parts).encode()).hexdigest()[:32]


def _entry_id(key: str | Mapping[str, Any]) -> tuple[str, str]:
    """(file-name part, recorded key) of a key given as parts or as a plain string."""
    if isinstance(key, Mapping):
        text = key_json(key)
        name = hashlib.sha256(text.encode()).hexdigest()[:32]
        # a tuned model's evaluation (``ForgettingSession._eval_key``): ``tuned-<hash>.npz``,
        # beside the base's ``<hash>.npz``
        return (f"tuned-{name}" if key.get("kind") == "eval-tuned" else name), text
    text = str(key)
    name = text if _NAME.fullmatch(text) else hashlib.sha256(text.encode()).hexdigest()[:32]
    return name, text


class EvalCache:
    """The cache folder. Every operation is a no-op (a miss) when it is disabled or unusable."""

    def __init__(self, directory: str | Path, enabled: bool = True, rootdir: str | Path | None = None) -> None:
        self.directory = Path(os.path.abspath(os.path.expanduser(str(directory))))
        self.enabled = enabled
        self.rootdir = rootdir
        self.problem: str | None = None  # why the folder is not used (None: usable or not checked yet)
        self._checked = False
        self._fd: int | None = None

    def close(self) -> None:
        """Close the folder's descriptor (a later use of a disabled cache is a no-op)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # sessions come and go (inner pytest runs, the Python API): no leaked descriptors
        self.close()

    # -- the folder ---------------------------------------------------------------------------
    def usable(self) -> bool:
        """Whether the folder passed its checks (run once; a failure warns once and disables the cache)."""
        if not self.enabled:
            return False
        if not self._checked:
            self._checked = True
            try:
                problem = self._check_folder()
            except OSError as exc:
                problem = f"cannot be used ({_strerror(exc)})"
            if problem is not None:
                self._disable(problem)
        return self.enabled

    def _disable(self, problem: str) -> None:
        """Stop using the cache for the rest of the process, with one warning."""
        if not self.enabled:
            return
        self.enabled = False
        self.problem = problem
        self.close()
        message = (
            f"pytest-forgetting: cache folder {self.directory} {problem}; running without the cache "
            "(set --forgetting-cache-dir or $FORGETTING_CACHE_DIR to a private folder, or pass --forgetting-no-cache)"
        )
        try:  # one fixed location: the same warning from every test and xdist worker is shown once
            warnings.warn_explicit(CacheWarning(message), CacheWarning, "pytest-forgetting", 0)
        except Warning:  # warnings turned into errors (-W error): the run must still go on uncached
            import sys

            sys.stderr.write(message + "\n")

    def _check_folder(self) -> str | None:
        path = self.directory
        root = Path(os.path.abspath(str(self.rootdir))) if self.rootdir is not None else None
        inside = root is not None and (path == root or root in path.parents)
        if inside:  # every component below the rootdir is the checkout's: no symbolic link allowed
            assert root is not None
            for part in [*reversed(path.relative_to(root).parents), path.relative_to(root)]:
                if str(part) == ".":
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.lstat(root / part).st_mode):
                        return f"is reached through the symbolic link {root / part} inside the rootdir (refused)"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "is a symbolic link (refused: entries must not be written where the link points)"
        if not stat.S_ISDIR(st.st_mode):
            return "is not a folder"
        owner = _owner_problem(st)
        if owner:
            return owner
        if _DIR_FD:
            fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                return "changed while it was checked (refused)"
            self._fd = fd
        if root is not None and not inside:  # the checkout reached through a link from outside it
            real_root, real_path = Path(os.path.realpath(root)), Path(os.path.realpath(path))
            inside = real_path == real_root or real_root in real_path.parents
        if inside:
            tracked = _git_tracked(Path(os.path.realpath(path)))
            if tracked:
                return tracked
        # a read-only folder is found now, not at the first write after a long evaluation
        try:
            tmp, fd = create_temp(self.directory, "probe", dir_fd=self._fd)
        except OSError as exc:
            return f"is not writable ({_strerror(exc)})"
        os.close(fd)
        self._unlink(tmp)
        return None

    # -- low-level file operations relative to the checked folder -------------------------------
    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            if self._fd is not None:
                os.unlink(name, dir_fd=self._fd)
            else:
                os.unlink(self.directory / name)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            if self._fd is not None:
                return os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            return os.lstat(self.directory / name)
        except FileNotFoundError:
            return None

    def _open_read(self, name: str, max_bytes: int) -> Any:
        flags = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY  # a FIFO must not block
        if self._fd is None and not _O_NOFOLLOW and os.path.islink(self.directory / name):
            raise _Miss("a symbolic link")  # no O_NOFOLLOW (Windows): checked by name instead
        try:
            fd = (
                os.open(name, flags, dir_fd=self._fd) if self._fd is not None else os.open(self.directory / name, flags)
            )
        except FileNotFoundError:
            raise _Miss("absent") from None
        except OSError as exc:  # ELOOP: a symbolic link
            raise _Miss(_strerror(exc)) from None
        fh = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _owner_problem(st) or st.st_size > max_bytes + 64 * 1024 + MAX_MEMBERS * 256:
            fh.close()
            raise _Miss("not a regular file of ours, or too large")
        return fh

    # -- entries ----------------------------------------------------------------------------------
    def _read(self, name: str, key_text: str, max_bytes: int) -> dict[str, np.ndarray] | None:
        if not self.usable():
            return None
        try:
            with self._open_read(f"{name}.npz", max_bytes) as fh:
                arrays = _read_npz(fh, max_bytes)
        except _Miss:
            return None
        except Exception:  # noqa: BLE001 - any damaged entry is a miss, recomputed and replaced
            return None
        recorded = arrays.pop("__key__", None)
        if recorded is None or recorded.shape != () or recorded.dtype.kind != "U" or str(recorded[()]) != key_text:
            return None
        return arrays

    def _write(self, name: str, key_text: str, arrays: dict[str, Any]) -> bool:
        if not self.usable():
            return False
        target = f"{name}.npz" if self._fd is not None else self.directory / f"{name}.npz"
        # relative to the checked folder's descriptor where there is one; the temporary is removed on failure
        try:
            atomic_write(
                target, lambda fh: np.savez(fh, __key__=np.array(key_text), **arrays), dir_fd=self._fd, makedirs=False
            )
        except OSError as exc:  # full, read-only, quota: one warning, the run goes on uncached
            self._disable(f"cannot be written ({_strerror(exc)})")
            return False
        return True

    def load(
        self,
        key: str | Mapping[str, Any],
        *,
        ids: np.ndarray | None = None,
        static: Mapping[str, np.ndarray] | None = None,
        validate: Callable[[dict[str, np.ndarray], dict[str, Any]], bool] | None = None,
    ) -> EvalResult | None:
        """The stored evaluation for ``key``, or None when it is absent or fails any check.

        With ``ids`` the entry must cover exactly those examples (same order) and every output must
        have one row per example; ``static`` outputs (labels...) must equal the task's; ``validate``
        gets the outputs and the entry's recorded metadata and may still refuse them.
        """
        name, text = _entry_id(key)
        n = len(ids) if ids is not None else None
        cap = EVAL_BYTES_FIXED + EVAL_BYTES_PER_EXAMPLE * (n if n is not None else 4096)
        data = self._read(name, text, cap)
        if data is None:
            return None
        try:
            return _eval_result(data, ids, static, validate)
        except Exception:  # noqa: BLE001 - a check that cannot even run is a failed check
            return None

    def store(self, key: str | Mapping[str, Any], result: EvalResult, meta: Mapping[str, Any] | None = None) -> bool:
        name, text = _entry_id(key)
        outputs = {k: np.asarray(v) for k, v in result.outputs.items()}
        if any(k.startswith("__") for k in outputs) or any(v.dtype.kind not in _DTYPE_KINDS for v in outputs.values()):
            return False
        record = {"outputs": {k: [v.dtype.str, list(v.shape)] for k, v in sorted(outputs.items())}, **(meta or {})}
        arrays = {
            "__ids__": np.asarray(result.ids),
            "__seconds__": np.float64(result.seconds),
            "__meta__": np.array(json.dumps(record, sort_keys=True)),
            **outputs,
        }
        return self._write(name, text, arrays)

    def load_prepared(self, key: str | Mapping[str, Any], n_examples: int | None = None) -> Any:
        """Tokenised inputs stored by :meth:`store_prepared`, or None (also for a damaged entry)."""
        name, text = _entry_id(key)
        cap = PREPARED_BYTES_FIXED + PREPARED_BYTES_PER_EXAMPLE * (n_examples if n_examples is not None else 4096)
        data = self._read(f"prepared-{name}", text, cap)
        if data is None:
            return None
        try:
            return _unflatten(data)
        except Exception:  # noqa: BLE001
            return None

    def store_prepared(self, key: str | Mapping[str, Any], prepared: Any) -> bool:
        """Store a nested mapping of tensors / arrays; anything else is not stored (returns False)."""
        arrays = _flatten(prepared)
        if arrays is None:
            return False
        name, text = _entry_id(key)
        self._write(f"prepared-{name}", text, arrays)
        return True

    @contextlib.contextmanager
    def lock(self, key: str | Mapping[str, Any]) -> Iterator[None]:
        """Exclusive per-key lock across processes (no-op when the cache is off or unusable).

        A lock file that is a symbolic link (or anything but a regular file) disables the cache: the
        lock is never opened through it.
        """
        if not self.usable():
            yield
            return
        name, _ = _entry_id(key)
        lock_name = f".{name}.lock"
        st = self._lstat(lock_name)
        if st is not None and (not stat.S_ISREG(st.st_mode) or _owner_problem(st)):
            self._disable(
                f"holds a lock file {lock_name} that is a symbolic link or not a regular file of ours (refused)"
            )
            yield
            return
        from filelock import FileLock

        lock = FileLock(str(self.directory / lock_name), mode=0o600)
        try:
            lock.acquire()
        except OSError as exc:  # ELOOP: swapped for a symbolic link after the check; EACCES, EROFS...
            self._disable(f"cannot lock {lock_name} ({_strerror(exc)})")
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.release()

    def offload_parent(self) -> Path | None:
        """``<cache>/offload``: a real folder of ours (created 0700), or None when it cannot be used safely."""
        if not self.usable():
            return None
        parent = self.directory / "offload"
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parent, 0o700)
            st = os.lstat(parent)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or _owner_problem(st):
            return None
        return parent


def _strerror(exc: OSError) -> str:
    if getattr(exc, "errno", None) == errno.ELOOP:
        return "a symbolic link"
    return exc.strerror or str(exc)


def _owner_problem(st: os.stat_result) -> str | None:
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # Windows: no owner ids to compare
        return None
    if st.st_uid != geteuid():
        return f"is owned by another user (uid {st.st_uid}, refused)"
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return "is writable by every user (refused)"
    return None


def _git_tracked(path: Path) -> str | None:
    """A refusal when git tracks files under ``path`` (a folder inside the checkout), else None.

    git runs with a timeout, without the repository's fsmonitor hook (the one configuration of a
    repository that makes ``ls-files`` run a program), with optional locks off and no pager.
    """
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not any((p / ".git").exists() for p in (probe, *probe.parents)):
        return None  # not inside a git work tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_PAGER="cat")
    cmd = [
        "git",
        "-c",
        "core.fsmonitor=",
        "-c",
        "core.hooksPath=/dev/null",
        "-C",
        str(probe),
        "ls-files",
        "-z",
        "--",
        str(path),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=GIT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        return (
            "is inside a git work tree and git is not installed to check that none of its files are tracked (refused)"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"is inside a git work tree and `git ls-files` failed ({exc}) (refused)"
    if proc.returncode != 0:
        if b"not a git repository" in proc.stderr:
            return None
        first = proc.stderr.decode(errors="replace").strip().splitlines()[:1]
        return (
            f"is inside a git work tree and `git ls-files` failed ({first[0] if first else proc.returncode}) (refused)"
        )
    files = [f for f in proc.stdout.split(b"\0") if f]
    if files:
        return (
            f"holds {len(files)} file(s) tracked by git (e.g. {files[0].decode(errors='replace')!r}); "
            "a cache inside the "
            "checkout can be forged by a pull request (refused: use the default user cache folder)"
        )
    return None


def _read_npz(fh: Any, max_bytes: int) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, refusing it (``_Miss``) before inflating anything too large."""
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _Miss("too many members")
        total = 0
        for info in infos:
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or not info.filename.endswith(
                ".npy"
            ):
                raise _Miss("unexpected member")
            total += info.file_size
        if total > max_bytes:
            raise _Miss(f"declares {total} bytes, over the cap of {max_bytes}")
        out: dict[str, np.ndarray] = {}
        for info in infos:
            key = info.filename[: -len(".npy")]
            if key in out:
                raise _Miss("duplicate member")
            with zf.open(info) as member:
                out[key] = _read_npy(member, info.file_size)
        return out


def _read_npy(member: Any, size: int) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(member)
    else:
        raise _Miss("unsupported npy version")
    if dtype.hasobject or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None:
        raise _Miss("unsupported dtype")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if nbytes > size:
        raise _Miss("header promises more data than the member holds")
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]
    got = 0
    while got < nbytes:
        chunk = member.read(min(nbytes - got, 1 << 22))
        if not chunk:
            raise _Miss("truncated member")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _eval_result(
    data: dict[str, np.ndarray],
    ids: np.ndarray | None,
    static: Mapping[str, np.ndarray] | None,
    validate: Callable[[dict[str, np.ndarray], dict[str, Any]], bool] | None,
) -> EvalResult | None:
    if not {"__ids__", "__seconds__", "__meta__"} <= set(data):
        return None
    got_ids = data["__ids__"]
    meta = json.loads(str(data["__meta__"][()])) if data["__meta__"].shape == () else None
    if not isinstance(meta, dict) or not isinstance(meta.get("outputs"), dict):
        return None
    outputs = {k: v for k, v in data.items() if not k.startswith("__")}
    if set(outputs) != set(meta["outputs"]) or got_ids.ndim != 1:
        return None
    n = len(got_ids)
    for name, arr in outputs.items():
        dtype_str, shape = meta["outputs"][name]
        if arr.dtype.str != dtype_str or list(arr.shape) != list(shape) or arr.ndim == 0 or arr.shape[0] != n:
            return None
    if ids is not None:
        ids = np.asarray(ids)
        if got_ids.shape != ids.shape or got_ids.dtype.kind != ids.dtype.kind or not np.array_equal(got_ids, ids):
            return None
    for name, value in (static or {}).items():
        value = np.asarray(value)
        if name not in outputs or outputs[name].shape != value.shape or not np.array_equal(outputs[name], value):
            return None
    seconds = data["__seconds__"]
    if seconds.shape != () or seconds.dtype.kind != "f" or not np.isfinite(seconds):
        return None
    result = EvalResult(ids=got_ids, outputs=outputs, seconds=float(seconds))
    if validate is not None and not validate(outputs, meta):
        return None
    return result


def _flatten(tree: Any) -> dict[str, np.ndarray] | None:
    """{"__layout__": JSON of [path, kind] per leaf, "a0": ..., "a1": ...}; None if a leaf is not an array."""
    layout: list[list[Any]] = []
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any, path: list[str]) -> bool:
        if isinstance(node, Mapping):
            if not all(isinstance(k, str) for k in node):
                return False
            return all(walk(v, [*path, k]) for k, v in node.items())
        if isinstance(node, np.ndarray) and node.dtype.kind in _DTYPE_KINDS and node.dtype.fields is None:
            kind, arr = "numpy", node
        elif type(node).__module__.startswith("torch") and hasattr(node, "detach"):
            kind, arr = "torch", node.detach().cpu().numpy()
        else:
            return False
        arrays[f"a{len(layout)}"] = arr
        layout.append([path, kind])
        return True

    if not isinstance(tree, Mapping) or not walk(tree, []):
        return None
    arrays["__layout__"] = np.array(json.dumps(layout))
    return arrays


def _unflatten(data: dict[str, np.ndarray]) -> dict[str, Any]:
    layout = json.loads(str(data["__layout__"][()]))
    if not isinstance(layout, list) or set(data) != {"__layout__", *(f"a{i}" for i in range(len(layout)))}:
        raise _Miss("layout does not match the arrays")
    tree: dict[str, Any] = {}
    for i, (path, kind) in enumerate(layout):
        if (
            not isinstance(path, list)
            or not path
            or not all(isinstance(p, str) for p in path)
            or kind not in ("numpy", "torch")
        ):
            raise _Miss("bad layout")
        arr: Any = data[f"a{i}"]
        if kind == "torch":
            import torch

            arr = torch.from_numpy(np.ascontiguousarray(arr))
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _Miss("bad layout")
        node[path[-1]] = arr
    return tree
