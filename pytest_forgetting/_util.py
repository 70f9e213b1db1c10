"""Small helpers every layer uses: "did you mean" suggestions and one atomic file write.

Standard library only and cheap to import (``difflib`` is imported on the error path alone), so that
any module can use it without importing anything else of the package: ``registry`` and
``tasks.base`` both take ``suggest`` from here and no longer import each other.
"""

from __future__ import annotations

import os

# from typing, not collections.abc: tests/unit/test_util.py pins the modules this leaf module imports
from typing import IO, Any, Callable, Sequence  # noqa: UP035

__all__ = ["atomic_write", "close_matches", "create_temp", "suggest"]

# -- "did you mean" -------------------------------------------------------------------------------


def close_matches(word: str, choices: Sequence[str] | Any, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The ``n`` choices closest to ``word`` (difflib's ratio >= ``cutoff``), best first."""
    import difflib  # only on the error path: ~3 ms of every pytest start-up otherwise

    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def suggest(name: str, choices: Sequence[str] | Any) -> str:
    """A " (did you mean 'x'?)" suffix, or "" when nothing is close."""
    close = close_matches(name, choices)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- atomic writes --------------------------------------------------------------------------------

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
#: a new file of our own: never an existing one, never through a symbolic link
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
_ATTEMPTS = 100

#: what ``atomic_write`` writes: bytes, text (UTF-8), or a function given the open binary file
#: (with ``by_name=True``: given the temporary file's path, for writers that open it themselves)
Content = bytes | str | Callable[[IO[bytes]], Any] | Callable[[str], Any]


def _in(directory: str, name: str, dir_fd: int | None) -> str:
    return name if dir_fd is not None else os.path.join(directory, name)


def create_temp(
    directory: str | os.PathLike[str], stem: str, *, perm: int = 0o600, dir_fd: int | None = None
) -> tuple[str, int]:
    """A new temporary file ``.STEM.<16 random hex>.tmp`` in ``directory``: (its name, an fd open for writing).

    Created with ``O_EXCL | O_NOFOLLOW`` (a planted file or symbolic link at the name is refused, never
    written through) and mode ``perm`` less the umask (0o600: private, as ``mkstemp``; 0o666: what a
    plain ``open`` would give). With ``dir_fd`` the name is relative to that open folder and
    ``directory`` is not used. The name is unpredictable; on the rare clash another is drawn.
    """
    import secrets  # not at import time: ~20 ms of every pytest start-up otherwise

    directory = os.fspath(directory)
    for attempt in range(_ATTEMPTS):
        name = f".{stem}.{secrets.token_hex(8)}.tmp"
        try:
            if dir_fd is not None:
                return name, os.open(name, _CREATE_FLAGS, perm, dir_fd=dir_fd)
            return name, os.open(os.path.join(directory, name), _CREATE_FLAGS, perm)
        except FileExistsError:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def atomic_write(
    path: str | os.PathLike[str],
    content: Content,
    *,
    dir_fd: int | None = None,
    makedirs: bool = True,
    perm: int = 0o600,
    chmod: int | None = None,
    fsync: bool = False,
    by_name: bool = False,
) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the new one, never half of it.

    The content goes to a temporary file beside ``path`` (:func:`create_temp`: unpredictable name,
    ``O_EXCL | O_NOFOLLOW``, created with ``perm`` less the umask) that ``os.replace`` then renames
    over ``path``: a symbolic link planted at ``path`` is replaced, never written through. Options:

    * ``dir_fd``: ``path`` is a name relative to this open folder (the cache works inside the folder
      it checked, so a folder swapped for a link afterwards is not followed); ``makedirs`` is ignored;
    * ``makedirs``: create the parent folders first (otherwise a missing folder is an ``OSError``);
    * ``chmod``: the mode the file ends with, whatever the umask (a report is meant to be read by others);
    * ``fsync``: flush the data to the disk before the rename;
    * ``by_name``: ``content`` is a function that writes the (empty, closed) temporary file by its
      path itself (``safetensors.torch.save_file``); not with ``dir_fd``.

    Any failure removes the temporary file and raises (``OSError`` for a full disk, a read-only
    folder, a missing folder without ``makedirs``); the old file at ``path`` is left as it was.
    """
    path = os.fspath(path)
    if by_name and (dir_fd is not None or not callable(content)):
        raise ValueError("atomic_write(by_name=True) takes a function of a path, and no dir_fd")
    if dir_fd is not None:
        directory, base = "", path
    else:
        directory, base = os.path.split(os.path.abspath(path))
        if makedirs:
            os.makedirs(directory, exist_ok=True)
    tmp, fd = create_temp(directory, os.path.basename(base), perm=perm, dir_fd=dir_fd)
    try:
        if by_name:
            os.close(fd)
            fd = -1
            content(_in(directory, tmp, dir_fd))  # type: ignore[arg-type,operator]
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                if isinstance(content, str):
                    fh.write(content.encode("utf-8"))
                elif isinstance(content, (bytes, bytearray, memoryview)):
                    fh.write(content)
                else:
                    content(fh)  # type: ignore[arg-type]
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
                if chmod is not None:
                    _fchmod(fh.fileno(), _in(directory, tmp, dir_fd), chmod, dir_fd)
                chmod = None
        if chmod is not None:  # by_name: the writer closed the file; by name, without following a link
            _fchmod(None, _in(directory, tmp, dir_fd), chmod, dir_fd)
        if dir_fd is not None:
            os.replace(tmp, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.replace(os.path.join(directory, tmp), path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            if dir_fd is not None:
                os.unlink(tmp, dir_fd=dir_fd)
            else:
                os.unlink(os.path.join(directory, tmp))
        except OSError:
            pass
        raise


def _fchmod(fd: int | None, name: str, mode: int, dir_fd: int | None) -> None:
    if fd is not None and hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    elif dir_fd is not None:
        os.chmod(name, mode, dir_fd=dir_fd)
    else:
        os.chmod(name, mode)
