"""GET /openapi.json: a valid OpenAPI 3.1 document that covers every route the admin app registers."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from admin.openapi import DOCUMENT, SCHEMAS, registered
from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy
from tests.test_admin_api import admin, call

READS = ("get",)


@pytest.fixture
async def secured(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> Slotswitch:
    monkeypatch.setenv("SLOTSWITCH_TEST_OPENAPI_TOKEN", "openapi-op")
    token = {"name": "op", "token_env": "SLOTSWITCH_TEST_OPENAPI_TOKEN"}
    return await start_proxy(admin={"listen": "127.0.0.1:0", "tokens": [token]})


async def served(app: Slotswitch) -> dict[str, Any]:
    async with admin(app) as s:  # no token: the document is public
        code, body, _ = await call(s, "GET", "/openapi.json")
    assert code == 200
    return body


def test_the_whole_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


async def test_the_served_document_is_valid_and_covers_every_route(secured: Slotswitch) -> None:
    doc = await served(secured)
    validate(doc)
    runner = secured._admin_runner
    assert runner is not None
    routes = registered(runner.app)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented, (routes - documented, documented - routes)
    for route in runner.app.router.routes():
        if route.name is not None and route.method != "HEAD":  # a named route's name is its operationId
            assert doc["paths"][route.resource.canonical][route.method.lower()]["operationId"] == route.name


def test_every_mutation_documents_its_errors_and_if_match() -> None:
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            public = op.get("security") == []
            assert public or "401" in codes, (method, path)
            if method in READS:
                continue
            # 503: in fleet mode every change goes through the shared store, which may be down. Resetting
            # the shadow comparison is not a routing change: it is this replica's alone.
            fleet = {"503"} if path != "/v1/shadow" else set()
            assert {"200", "400", "401", "403", "413"} | fleet <= codes, (method, path)
            for code in codes - {"200"}:
                assert op["responses"][code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
            if path not in ("/v1/alerts", "/v1/shadow"):
                assert {"409", "412"} <= codes, (method, path)
                assert any(p["name"] == "If-Match" for p in op["parameters"]), (method, path)


def test_history_documents_the_fleet_stores_503() -> None:
    responses = DOCUMENT["paths"]["/v1/history"]["get"]["responses"]
    assert "state_store_unavailable" in responses["503"]["description"]


def test_request_bodies_refuse_unknown_fields() -> None:
    for name in ("SwitchRequest", "ReasonRequest", "RampRequest", "DeployRequest"):
        assert SCHEMAS[name]["additionalProperties"] is False, name


async def test_handlers_refuse_what_the_schemas_refuse(secured: Slotswitch) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/switch", {"slot": "green", "bogus": 1}),
        ("POST", "/v1/switch", {"slot": "green", "reason": None}),
        ("POST", "/v1/switch", {"slot": "green", "reason": "x" * 1025}),
        ("POST", "/v1/switch", {"slot": "green", "drain_timeout": -1}),
        ("POST", "/v1/switch", {"slot": "green", "drain_timeout": " 5s"}),
        ("POST", "/v1/ramp", {"slot": "green", "steps": [50, 50]}),
        ("POST", "/v1/ramp", {"slot": "green", "steps": [0]}),
        ("POST", "/v1/ramp", {"slot": "green", "interval": "0s"}),
        ("POST", "/v1/ramp", {"slot": "green", "interval": 0}),
        ("PUT", "/v1/slots/green", {"upstreams": []}),
        ("PUT", "/v1/slots/green", {"upstreams": ["http://a:99999"]}),
        ("PUT", "/v1/slots/green", {"upstreams": ["http://a/path"]}),
        ("POST", "/v1/rollback", {"why": "x"}),
    ]
    headers = {"Authorization": "Bearer openapi-op"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{secured.admin_port}", headers=headers) as s:
        for method, path, body in cases:
            code, answer, _ = await call(s, method, path, json=body)
            assert code == 400, (method, path, body, answer)
        deep = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError
        long = b'{"slot": "green", "drain_timeout": ' + b"1" * 5000 + b"}"  # int() refuses over 4300 digits
        for raw in (deep, long):  # still 400s, not 500s
            code, answer, _ = await call(s, "POST", "/v1/switch", data=io.BytesIO(raw))
            assert (code, answer["error"]["code"]) == (400, "invalid_json")
        for value in ("x", "1.5", '"2', "-1", "1_0"):
            code, answer, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"}, headers={"If-Match": value})
            assert (code, answer["error"]["code"]) == (400, "invalid_if_match"), value
        code, answer, _ = await call(s, "POST", "/v1/switch", json={"slot": "green"}, headers={"If-Match": "*"})
        assert (code, answer["generation"]) == (200, 2)
        code, answer, _ = await call(s, "POST", "/v1/ramp", json={"slot": "blue", "steps": [50.0, 10], "interval": 1})
        assert code == 200, answer
        assert answer["ramp"]["steps"] == [10, 50, 100]  # any order, sorted; 50.0 counts as an integer
