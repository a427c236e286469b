"""One escaping for every log line: what comes from outside (headers, alert labels, reasons, URLs)
cannot forge a line, hide one, or drive a terminal.

Invariant: the text a log line shows has no control character; CR, LF, every other C0 and C1 control
byte, DEL, the Unicode line and paragraph separators and the backslash itself are written as `\\xNN`
(`\\u2028` for the two above U+00FF), so the escaping reads back unambiguously. `EscapingFormatter`
applies it to every argument of a record (the values from outside), or to its whole message when
it has no arguments; the format string of a record with arguments and its traceback are the
proxy's own text and are left as they are. The audit log is JSON Lines, which escapes control
characters itself.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
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


def _escaped(value: object) -> object:
    if isinstance(value, int | float):  # numbers keep their %d / %.1f formatting
        return value
    return escape(str(value))


class EscapingFormatter(logging.Formatter):
    """A Formatter that escapes what a record carries from outside: each of its arguments, or its
    whole message when it has none (a message built before logging). The format string of a record
    with arguments is the proxy's own text and keeps its line breaks (a list of config errors, one
    per line), as does the traceback Formatter.format appends."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        record = copy.copy(record)  # other handlers (and the caller) keep the record as it was
        if isinstance(args, Mapping):
            record.args = {key: _escaped(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_escaped(value) for value in args)
        else:
            record.msg = escape(str(record.msg))
        return super().format(record)
