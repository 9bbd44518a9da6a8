"""Text from files and the network made safe to print: control characters escaped.

Tensor names, config values, paths and Hub answers are data; printed raw, a name holding terminal
escape codes could rewrite the user's screen, and one holding a newline could forge a line.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included), DEL and C1 controls; also lone surrogates, which
# stand for bytes that are not UTF-8 (a file name's) and cannot be printed as they are.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``)."""
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
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}")
