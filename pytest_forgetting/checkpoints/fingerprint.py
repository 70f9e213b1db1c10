"""Content fingerprints of checkpoint references, and the store of per-file digests they reuse."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .factory import _as_module
from .records import Ref, Target
from .refs import _describe
from .safety import _require_regular, _require_regular_stat
from .util import _describe_exc, _show

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


_CHUNK = 1 << 20


def fingerprint_ref(
    ref: Ref,
    *,
    rootdir: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    allow_download: bool = False,
    digests: FileDigests | None = None,
) -> str:
    """Content fingerprint of a checkpoint reference, without loading the model.

    Files: sha256 over (relative name, size, sha256 of the bytes) of the weight, config and
    tokenizer files in sorted order, streamed in 1 MiB chunks; ``digests`` remembers the
    per-file hashes of unchanged files (see :class:`FileDigests`; without one, every file is
    read). An ``nn.Module``: sha256 over its sorted
    state_dict (name, dtype, shape, bytes). A hub id is looked up in the local cache
    (``allow_download`` fetches it first). Pickle references are refused unless
    ``allow_pickle``, exactly as :func:`load_checkpoint` would.
    """
    try:
        if not isinstance(ref, (str, os.PathLike)):
            return _fingerprint_module(_as_module(ref))
        target = _describe(ref, rootdir, allow_pickle=allow_pickle, allow_download=allow_download)
        return _fingerprint_files(target, digests)
    except CheckpointError:
        raise
    except Exception as exc:  # a bug or an exotic file: still one clear line
        raise CheckpointError(f"cannot fingerprint checkpoint {_show(ref)}: {_describe_exc(exc)}") from exc


class FileDigests:
    """sha256 of checkpoint files, reused while a file is provably unchanged.

    A digest is remembered under the file's (real path, device, inode, size, mtime, ctime), the
    test git's index uses: rewriting a file changes its ctime, which no unprivileged tool can set
    back. A file modified less than 2 s before it was hashed is not remembered ("racy" in git's
    terms: a coarse file-system clock could give a second write the same timestamps), nor one that
    changed while it was read. Digests live in this object (a session keeps one for its whole run,
    so a cold run hashes each file once) and, with ``path``, in a small JSON file in the cache
    directory, so a warm run does not re-read a multi-gigabyte base checkpoint just to find its
    cached evaluation. There is no process-wide store: whoever fingerprints passes the one to use.
    """

    RACY_NS = 2_000_000_000
    MAX_ENTRIES = 2000
    MAX_FILE_BYTES = 4 * 2**20  # MAX_ENTRIES entries of a few hundred bytes, with room to spare

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, str] = {}
        self._loaded = False
        self._dirty = False

    @staticmethod
    def _key(path: Path, st: os.stat_result) -> str:
        return f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"

    def _load_file(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        # never through a symbolic link, never a FIFO (O_NONBLOCK), only a regular file of ours, bounded
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError:
            return
        try:
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                geteuid = getattr(os, "geteuid", None)
                if (
                    not stat.S_ISREG(st.st_mode)
                    or st.st_size > self.MAX_FILE_BYTES
                    or (geteuid is not None and st.st_uid != geteuid())
                ):
                    return
                data = json.loads(fh.read(self.MAX_FILE_BYTES + 1).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return
        if isinstance(data, dict):
            self._memory.update(
                {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and len(v) == 64}
            )

    def digest(self, path: Path) -> bytes:
        st = _require_regular_stat(path)
        key = self._key(path, st)
        self._load_file()
        known = self._memory.get(key)
        if known is not None:
            return bytes.fromhex(known)
        h = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with open(path, "rb") as fh:
            while True:
                n = fh.readinto(buffer)
                if not n:
                    break
                h.update(view[:n])
        value = h.digest()
        after = os.stat(path)
        settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.RACY_NS
        if settled and self._key(path, after) == key:
            self._remember(key, value.hex())
        return value

    def _remember(self, key: str, hexdigest: str) -> None:
        self._memory[key] = hexdigest
        if self.path is not None:
            self._dirty = True

    def flush(self) -> None:
        """Write new digests to the store in one atomic replace (once per fingerprint, not per file)."""
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        while len(self._memory) > self.MAX_ENTRIES:
            self._memory.pop(next(iter(self._memory)))
        from .._util import atomic_write

        # a temporary file with an unpredictable name, created O_EXCL | O_NOFOLLOW, renamed over the
        # store: a planted symbolic link (at the store or at a guessed temporary name) is replaced,
        # never written through. A concurrent worker's entry lost here is only a later re-hash.
        try:
            atomic_write(self.path, json.dumps(self._memory))
        except OSError:
            pass


def _fingerprint_files(target: Target, digests: FileDigests | None = None) -> str:
    """sha256 over (relative name, size, sha256 of the bytes) of every file, in name order."""
    if digests is None:
        digests = FileDigests()  # remembers nothing beyond this call
    digest = _files_digest()
    for path, rel in _in_name_order(target):
        _add_file(digest, rel, _require_regular(path), digests.digest(path))
    digests.flush()
    return "sha256:" + digest.hexdigest()


# What a files fingerprint covers, shared with staging.Stage (which hashes the bytes it copies):
# every file of the target by its name relative to the folder (or to the file's own folder).


def _files_digest() -> Any:
    return hashlib.sha256(b"pytest-forgetting/files/v2\0")


def _in_name_order(target: Target) -> list[tuple[Path, str]]:
    """The target's files with their relative names (posix), sorted by that name."""
    base = target.path if target.path.is_dir() else target.path.parent
    return sorted(((path, path.relative_to(base).as_posix()) for path in target.files), key=lambda item: item[1])


def _add_file(digest: Any, rel: str, size: int, file_digest: bytes) -> None:
    name = rel.encode("utf-8", "surrogateescape")
    digest.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", size) + file_digest)


def _fingerprint_module(model: torch.nn.Module) -> str:
    import torch

    digest = hashlib.sha256(b"pytest-forgetting/module/v1\0")
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):  # extra_state can be anything
            digest.update(f"{name}\0{type(tensor).__name__}\0".encode())
            continue
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise CheckpointError(
                f"parameter {name!r} is on the meta device (never materialised); cannot fingerprint it"
            )
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))  # type: ignore[arg-type]
    return "sha256:" + digest.hexdigest()
