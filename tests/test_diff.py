"""The answer comparison of shadow traffic (proxy.release.diff) and its results store's bounds."""

from __future__ import annotations

import json

import pytest

from proxy.release.diff import MAX_PLACES, Answer, Ignore, covered, differences, format_path, generalize, parse_path

JSON = (("content-type", "application/json"),)


def answer(body: object, status: int = 200, headers: tuple[tuple[str, str], ...] = JSON) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, headers, raw)


def test_json_is_compared_by_structure_and_names_paths() -> None:
    a = answer({"id": 1, "items": [{"total": 5, "sku": "a"}, {"total": 7}], "meta": {"x": None}})
    b = Answer(200, JSON, b'{"meta": {"x": null}, "items": [{"sku": "a", "total": 5}, {"total": 8}], "id": 1.0}')
    assert differences(a, b) == ["$.items[1].total"]
    assert differences(answer({"a": 1}), answer({"a": True})) == ["$.a"]  # true is not 1
    assert differences(answer({"a": [1]}), answer({"a": [1, 2], "b c": 1})) == ["$.a[1]", "$['b c']"]
    assert differences(answer({"a": {}}), answer({"a": []})) == ["$.a"]


def test_ignored_paths_with_wildcards_hide_a_subtree() -> None:
    a = answer({"at": 1, "items": [{"u": 1, "v": 1}, {"u": 2, "v": 1}], "m": {"deep": {"x": 1}}})
    b = answer({"at": 2, "items": [{"u": 3, "v": 1}, {"u": 4, "v": 2}], "m": {"deep": {"x": 2}}})
    ignore = Ignore.of((), ("$.at", "$.items[*].u", "$.m"))
    assert differences(a, b, ignore) == ["$.items[1].v"]


def test_status_headers_and_other_bodies() -> None:
    a = Answer(200, (("content-type", "text/plain"), ("x-a", "1"), ("date", "x"), ("content-length", "3")), b"abc")
    b = Answer(
        500, (("content-type", "text/plain"), ("X-B".lower(), "2"), ("date", "y"), ("content-length", "3")), b"abd"
    )
    assert differences(a, b, Ignore.of(("Date",), ())) == ["status", "header:x-a", "header:x-b", "body"]
    same = Answer(200, (("content-type", "text/plain"), ("x-a", "1")), b"abc")
    assert differences(same, same) == []
    # Not JSON although it says so: compared as bytes.
    assert differences(answer(b"{not json"), answer(b"{not json!")) == ["body"]


def test_places_are_bounded() -> None:
    a, b = answer({f"k{i}": i for i in range(100)}), answer({f"k{i}": -i - 1 for i in range(100)})
    assert len(differences(a, b)) == MAX_PLACES


@pytest.mark.parametrize("text", ["$", "$.a", "$.items[*].id", "$['a b'][3]", "$.a-b_c"])
def test_paths_round_trip(text: str) -> None:
    assert format_path(parse_path(text)) == text


def test_generalize_and_covered() -> None:
    assert generalize("$.items[12].total") == "$.items[*].total"
    assert generalize("header:x") == "header:x"
    assert covered("$.items[*].total", ["$.items"])
    assert covered("$.a", ["$.a"]) and not covered("$.ab", ["$.a"])
    assert not covered("status", ["$"])
