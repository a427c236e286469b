"""One escaping for every log line: what comes from outside (headers, alert labels, reasons, URLs)
cannot forge a line, hide one, or drive a terminal.

Invariant: the text a log line shows has no control character; CR, LF, every other C0 and C1 control
byte, DEL, the Unicode line and paragraph separators and the backslash itself are written as `\\xNN`
(`\\u2028` for the two above U+00FF), so the escaping reads back unambiguously. `EscapingFormatter`
applies it to the formatted message of every record (its arguments included) and leaves a
traceback block as it is. The audit log is JSON Lines, which escapes control characters itself.
"""

from __future__ import annotations

import logging
from typing import Final


def _table() -> dict[int, str]:
    table = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0), ord("\\"))}
    table[0x2028] = "\\u2028"
    table[0x2029] = "\\u2029"
    return table


ESCAPES: Final = _table()


def escape(text: str) -> str:
    """`text` with control characters and backslashes written as escapes (one C-level call)."""
    return text.translate(ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A Formatter whose message part (format string, arguments, asctime, names) is escaped; the
    traceback Formatter.format appends after it keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))
