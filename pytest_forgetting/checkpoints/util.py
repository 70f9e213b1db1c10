"""Small helpers of the checkpoint package: escaped excerpts for one-line messages, file sizes.

Checkpoint files are untrusted: text taken from them (file and tensor names, tokens, labels) is
shown only through :func:`_esc` / :func:`_excerpt`, short and with every non-printable character
escaped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _abspath(path: Path) -> str:
    return os.path.abspath(path)


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(_esc(str(i), 120) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line_text(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _esc(line, limit)


def _esc(text: str, limit: int = 200) -> str:
    """A string that may come from a checkpoint, safe to print: every non-printable character (newline,
    ANSI escape, bidi control) written as repr writes it, and at most ``limit`` characters."""
    out = text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _excerpt(value: Any, limit: int = 24) -> str:
    """A short, escaped excerpt of a value read from a checkpoint (a token, a label, a tensor name)."""
    return _esc(repr(value) if isinstance(value, str) else str(value), limit)


def _describe_exc(exc: BaseException, with_type: bool = True) -> str:
    text = _one_line_text(str(exc))
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _show(ref: Any, quote: bool = True) -> str:
    if isinstance(ref, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(ref))
        return repr(text) if quote else text
    return f"<in-memory {type(ref).__name__}>"
