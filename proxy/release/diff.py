"""Comparing two HTTP answers to the same request: pure functions, no I/O.

`differences(a, b, ignore)` names where two answers differ, each place as a string:
- "status";
- "header:<name>" (lower case), for each header not ignored whose values differ or that only one
  has; hop-by-hop headers and Content-Length (the body says it) are not compared;
- a JSON path ("$.items[3].total", "$['a b']") when both bodies are JSON: compared structurally, so
  key order and whitespace do not matter, and 1 equals 1.0 but not true;
- "body" when the bodies differ otherwise (by length and SHA-256).

Two answers with the same status, the same compared headers in the same order and the same body bytes
are the same without any further work (no JSON parsed, no hash): the usual case, first.

Paths in results are concrete (`$.items[3].total`); `generalize` turns them into the form counted
per endpoint (`$.items[*].total`), so that a list's length does not multiply the places counted.
An ignored path ($.generated_at, $.items[*].updated_at) hides that node and everything under it.
At most MAX_PLACES places are named per comparison.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

MAX_PLACES: Final = 32
NOT_COMPARED: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "trailer", "upgrade"}
)
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\*|[0-9]+|'[^']*')\]")
_INDEX = re.compile(r"\[[0-9]+\]")
Step = str | int  # a key, or a list index; "*" in a pattern matches any step


@dataclass(slots=True)
class Answer:  # never changed once made (not frozen: made twice per mirror, and frozen costs)
    status: int
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body: bytes


@dataclass(frozen=True, slots=True)
class Ignore:
    headers: frozenset[str] = frozenset()
    paths: tuple[tuple[Step, ...], ...] = ()

    @classmethod
    def of(cls, headers: Iterable[str], paths: Iterable[str]) -> Ignore:
        return cls(frozenset(h.lower() for h in headers), tuple(parse_path(p) for p in paths))


def parse_path(text: str) -> tuple[Step, ...]:
    """`$.items[*].id` -> ("items", "*", "id"); ValueError if it is not such a path."""
    if not text.startswith("$"):
        raise ValueError(f"a JSON path starts with $: {text!r}")
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ValueError(f"not a JSON path: {text!r}")
        key, index = match.group(1), match.group(2)
        if key is not None:
            steps.append(key)
        elif index == "*":
            steps.append("*")
        elif index.startswith("'"):
            steps.append(index[1:-1])
        else:
            steps.append(int(index))
        pos = match.end()
    return tuple(steps)


def format_path(steps: Iterable[Step]) -> str:
    out = ["$"]
    for step in steps:
        if isinstance(step, int):
            out.append(f"[{step}]")
        elif step == "*" or not _NAME.match(step):
            out.append("[*]" if step == "*" else "['" + step.replace("'", "\\'") + "']")
        else:
            out.append("." + step)
    return "".join(out)


def generalize(where: str) -> str:
    """The place as counted per endpoint: list indices become [*]."""
    return _INDEX.sub("[*]", where) if where.startswith("$") else where


def covered(where: str, places: Iterable[str]) -> bool:
    """Whether `where` (generalized) is one of `places` or lies under one of them."""
    for place in places:
        if where == place or (
            where.startswith(place) and place.startswith("$") and where[len(place) : len(place) + 1] in (".", "[")
        ):
            return True
    return False


def is_json(headers: tuple[tuple[str, str], ...]) -> bool:
    return any(name == "content-type" and "json" in value.lower() for name, value in headers)


def differences(a: Answer, b: Answer, ignore: Ignore = Ignore()) -> list[str]:
    if (
        a.status == b.status
        and a.body == b.body
        and _kept(a.headers, ignore.headers) == _kept(b.headers, ignore.headers)
    ):
        return []  # the same bytes: no JSON parsed, no hash, no dict of headers
    places: list[str] = []
    if a.status != b.status:
        places.append("status")
    places += _header_differences(a.headers, b.headers, ignore.headers)
    if a.body != b.body:
        places += _body_differences(a, b, ignore.paths)
    return places[:MAX_PLACES]


def _kept(headers: tuple[tuple[str, str], ...], skip: frozenset[str]) -> list[tuple[str, str]]:
    """The headers compared, in order: equal lists mean equal headers (unequal ones may still be, reordered)."""
    return [(name, value) for name, value in headers if name not in skip and name not in NOT_COMPARED]


def _joined(headers: tuple[tuple[str, str], ...], skip: frozenset[str]) -> dict[str, str]:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if name not in skip and name not in NOT_COMPARED:
            values.setdefault(name, []).append(value.strip())
    return {name: ", ".join(v) for name, v in values.items()}


def _header_differences(
    a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...], skip: frozenset[str]
) -> list[str]:
    ja, jb = _joined(a, skip), _joined(b, skip)
    return [f"header:{name}" for name in sorted(ja.keys() | jb.keys()) if ja.get(name) != jb.get(name)]


def _body_differences(a: Answer, b: Answer, ignored: tuple[tuple[Step, ...], ...]) -> list[str]:
    if is_json(a.headers) or is_json(b.headers):
        try:
            da, db = json.loads(a.body), json.loads(b.body)
        except (ValueError, RecursionError):
            pass
        else:
            out: list[str] = []
            _walk(da, db, (), ignored, out)
            return out
    # Not JSON: by length and hash.
    same = len(a.body) == len(b.body) and hashlib.sha256(a.body).digest() == hashlib.sha256(b.body).digest()
    return [] if same else ["body"]


def _ignored(steps: tuple[Step, ...], patterns: tuple[tuple[Step, ...], ...]) -> bool:
    for pattern in patterns:
        if len(pattern) == len(steps) and all(p == "*" or p == s for p, s in zip(pattern, steps, strict=True)):
            return True
    return False


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _walk(a: Any, b: Any, steps: tuple[Step, ...], ignored: tuple[tuple[Step, ...], ...], out: list[str]) -> None:
    if len(out) >= MAX_PLACES or (ignored and _ignored(steps, ignored)):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if key not in a or key not in b:
                if not (ignored and _ignored((*steps, key), ignored)):
                    out.append(format_path((*steps, key)))
            else:
                _walk(a[key], b[key], (*steps, key), ignored, out)
            if len(out) >= MAX_PLACES:
                return
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            if index >= len(a) or index >= len(b):
                if not (ignored and _ignored((*steps, index), ignored)):
                    out.append(format_path((*steps, index)))
            else:
                _walk(a[index], b[index], (*steps, index), ignored, out)
            if len(out) >= MAX_PLACES:
                return
    elif _kind(a) != _kind(b) or a != b:
        out.append(format_path(steps))
