"""Text from files and the network made safe to print: control and invisible characters escaped.

Tensor names, config values, paths and Hub answers are data; printed raw, a name holding terminal
escape codes could rewrite the user's screen, one holding a newline (or a line or paragraph
separator) could forge a line, and one holding a bidirectional override or a zero-width character
could show a name other than the one it is.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included), DEL and C1 controls; the soft hyphen, zero-width and
# joining characters (U+180E, U+200B-U+200D, U+2060-U+2064, U+FEFF); the marks and embeddings that
# reorder text (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+206F); the line and paragraph
# separators (U+2028, U+2029); the interlinear annotation marks (U+FFF9-U+FFFB) and the invisible
# tag characters (U+E0000-U+E007F); also lone surrogates, which stand for bytes that are not
# UTF-8 (a file name's) and cannot be printed as they are.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)


def printable(text: str) -> str:
    """``text`` with every control or invisible character written as an escape (``\\x1b``,
    ``\\n``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(_escape, text)


def first_line(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"\\x{code - 0xDC00:02x}" if code >= 0xDC00 else f"\\u{code:04x}"
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    if code > 0xFF:
        return f"\\u{code:04x}"
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
