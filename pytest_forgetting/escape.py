"""Escaping of untrusted text for each place a report puts it.

Example ids, task, class, tensor and file names, candidate names and the reasons built from
them come from checkpoints, data files and pull requests. Each output has its own hazards:

- :func:`terminal`: control characters (ANSI escapes can recolour or erase lines, a newline
  starts a line that looks like the plugin's own), C1 controls, Unicode line separators and
  bidirectional overrides ("Trojan Source") become visible escapes such as ``\\x1b``, ``\\n``
  or ``\\u202e``. The result is one line that shows every character it stands for.
- :func:`markdown`: :func:`terminal`, then every Markdown-active ASCII character is
  backslash-escaped (no raw HTML, no links or images, no emphasis, no table-cell breaks, no
  math, no autolinked URLs), and ``@`` is followed by a zero-width space so no one is
  mentioned. :func:`markdown_code` is the same text as an inline code span.
- :func:`xml`: characters XML 1.0 cannot hold (most C0 controls, surrogates, U+FFFE/U+FFFF)
  and the discouraged C1 controls become visible escapes; newlines and tabs too, so a
  property value stays one line in every viewer.
- :func:`plot`: :func:`terminal`, with ``$`` escaped so that matplotlib does not parse a name
  as mathtext.

- :func:`json_text`: for an already serialised JSON document, the characters that the encoder
  leaves raw with ``ensure_ascii=False`` but a terminal acts on (C1 controls, bidirectional and
  other format characters, line separators) and lone surrogates (which UTF-8 cannot encode)
  become ``\\uXXXX`` escapes: the same JSON values, safe to ``cat``.

All of them take any object (``str()`` of it) and never raise. The JSON report keeps the raw
values; only their encoding changes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["json_text", "markdown", "markdown_code", "plot", "terminal", "xml"]

_ELLIPSIS = "…"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode categories shown as escapes: controls (C0, DEL, C1), format characters (the
# bidirectional overrides of "Trojan Source", zero-width characters, the BOM), surrogates left by
# undecodable file names, and the line / paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _visible(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _needs_escape(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN


def _cap(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    cut = max(0, limit - 1)
    return f"{text[:cut]}{_ELLIPSIS}(+{len(text) - cut} chars)"


def terminal(value: Any, limit: int | None = None) -> str:
    """``value`` as one line of terminal text with every control character made visible.

    ``limit`` caps the length of the original text (the rest is replaced by a count).
    """
    text = _cap(value if isinstance(value, str) else str(value), limit)
    if text.isprintable() and text.isascii():
        return text  # the common case, fast
    return "".join(_visible(c) if _needs_escape(c) else c for c in text)


# Every ASCII character that means something to CommonMark, GitHub-flavoured Markdown (tables,
# strikethrough, autolinks) or GitHub's math: escaped with a backslash, which CommonMark allows
# for any ASCII punctuation. Left alone: / , = % ' " ; ? { } ^ and - + except at the start
# (where they would open a list item): all inert mid-line.
_MD_ACTIVE = frozenset("\\`*_[]()<>|&!~#:.$@")
_MD_LEADING = frozenset("-+")
_ZWSP = "\u200b"


def markdown(value: Any, limit: int | None = None) -> str:
    """``value`` as inert Markdown text (also safe inside a GFM table cell)."""
    text = terminal(value, limit)
    out = []
    for i, char in enumerate(text):
        if char in _MD_ACTIVE or (char in _MD_LEADING and not text[:i].strip()):
            out.append("\\" + char)
            if char == "@":
                out.append(_ZWSP)  # GitHub links @mentions after rendering, escaped or not
        else:
            out.append(char)
    return "".join(out)


def markdown_code(value: Any, limit: int | None = None, *, table: bool = True) -> str:
    """``value`` as an inline code span: literal text, no HTML, no links.

    The fence is longer than any run of backticks inside. In a table (``table=True``) a ``|``
    is written ``\\|``, which GFM turns back into ``|`` before reading the span.
    """
    text = terminal(value, limit)
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def _xml_illegal(char: str) -> bool:
    return _needs_escape(char) or char in "\ufffe\uffff"


def xml(value: Any, limit: int | None = None) -> str:
    """``value`` with nothing an XML 1.0 document cannot hold (and no line breaks)."""
    text = _cap(value if isinstance(value, str) else str(value), limit)
    if text.isprintable() and text.isascii():
        return text
    return "".join(_visible(c) if _xml_illegal(c) else c for c in text)


def plot(value: Any, limit: int | None = None) -> str:
    """``value`` for a matplotlib label: one visible line, no mathtext."""
    return terminal(value, limit).replace("$", "\\$")


# what json.dumps(ensure_ascii=False) leaves raw although it is a control, format or separator
# character (C0 controls are always escaped by the encoder); outside strings JSON holds ASCII only
_JSON_HIDDEN = re.compile(
    "[\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0001-\U000e007f]"
)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_text(text: str) -> str:
    """A serialised JSON document with hidden characters written as ``\\uXXXX`` escapes."""
    return text if text.isascii() else _JSON_HIDDEN.sub(_json_escape, text)
