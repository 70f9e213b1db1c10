"""Private, verified copies of a checkpoint's files: all that the loaders ever read."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .fingerprint import _add_file, _files_digest, _in_name_order
from .records import Target
from .util import _esc

_COPY_CHUNK = 8 << 20


class Stage:
    """Private copies of a checkpoint's files: what transformers, peft, gguf and safetensors read.

    Those libraries read the folder they are given themselves, and memory-map weights (safetensors,
    GGUF): a link in the checkpoint folder would lead them outside it, and a weights file rewritten
    in place while mapped kills the whole process with SIGBUS. So every file of the target is first
    validated (``_check_files``: contained, regular, plausible size), then copied once, from one open
    descriptor whose fstat must not change during the copy, into a fresh 0700 temporary folder that
    only this process writes (``$TMPDIR``); the loaders only ever see those copies, and the fingerprint
    is computed from the very bytes copied, so it always describes what was evaluated. A copy costs
    one read and one write of the checkpoint, about what hashing it cost before; reading the weights
    into memory instead would double the peak memory of a large model and cannot serve accelerate's
    disk offload. Mapped copies may be deleted once loaded (Linux keeps an unlinked mapped file
    alive, and nobody else can truncate it); with a device map they live as long as the model.
    """

    def __init__(self, target: Target) -> None:
        import tempfile

        self.source = target
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="pytest-forgetting-load-"))
        except OSError as exc:
            raise CheckpointError(
                f"cannot create a private copy of the checkpoint in {tempfile.gettempdir()}: {exc.strerror or exc}; "
                "set TMPDIR to a writable folder"
            ) from None
        digest = _files_digest()
        copies = []
        try:
            for path, rel in _in_name_order(target):
                size, file_digest = _copy_verified(path, self.dir / rel)
                _add_file(digest, rel, size, file_digest)
                copies.append(self.dir / rel)
        except BaseException:
            self.remove()
            raise
        self.fingerprint = "sha256:" + digest.hexdigest()
        path = self.dir if target.path.is_dir() else self.dir / target.path.name
        self.target = Target(target.kind, path, target.resolved, target.weights, tuple(copies))

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def keep_while(self, obj: Any) -> None:
        """Delete the copies when ``obj`` is garbage-collected (or at exit) instead of now."""
        import shutil
        import weakref

        weakref.finalize(obj, shutil.rmtree, str(self.dir), True)

    def unstage(self, exc: CheckpointError) -> CheckpointError:
        """The same error naming the user's files instead of their private copies."""
        message = str(exc)
        origin = self.source.path if self.source.path.is_dir() else self.source.path.parent
        if str(self.dir) not in message:
            return exc
        fixed = CheckpointError(message.replace(str(self.dir), str(origin)))
        fixed.__cause__ = exc.__cause__
        return fixed


def _copy_verified(src: Path, dst: Path) -> tuple[int, bytes]:
    """Copy ``src`` to a new private file, hashing the bytes; refuse it if it changes meanwhile."""
    shown = _esc(str(src))
    try:
        fin = open(src, "rb", buffering=0)
    except OSError as exc:
        raise CheckpointError(f"cannot read {shown}: {exc.strerror or exc}") from None
    with fin:
        before = os.fstat(fin.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise CheckpointError(f"{shown} is not a regular file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        h = hashlib.sha256()
        total = 0
        buffer = bytearray(max(1, min(_COPY_CHUNK, before.st_size + 1)))
        view = memoryview(buffer)
        try:
            fd = os.open(dst, flags, 0o600)
            try:
                while total <= before.st_size:
                    n = fin.readinto(buffer)
                    if not n:
                        break
                    h.update(view[:n])
                    done = 0
                    while done < n:
                        done += os.write(fd, view[done:n])
                    total += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(
                f"cannot copy {shown} to the private folder {dst.parent} before loading it: {exc.strerror or exc}; "
                "set TMPDIR to a folder with enough free space"
            ) from None
        after = os.fstat(fin.fileno())
    if total != before.st_size or _stat_signature(before) != _stat_signature(after):
        raise CheckpointError(
            f"{shown} changed while it was being read ({before.st_size:,} bytes before, {after.st_size:,} after); "
            "run again once nothing writes to the checkpoint"
        )
    return total, h.digest()


def _stat_signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
