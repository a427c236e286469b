"""GET and DELETE /v1/shadow: shadow traffic's comparison of the idle slot with the active one.

GET answers the per-endpoint table (proxy.release.shadow_results); with `?endpoint=GET /a/{id}` it
adds that endpoint's samples (request, both answers side by side, the places that differ), whose
Authorization, Cookie and Set-Cookie values were redacted before they were stored. DELETE (operator)
starts the comparison afresh and is recorded in the audit log with who asked.
The OpenAPI fragments for both are here, next to the handlers; admin/openapi.py merges them.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from admin.api import AUDIT, SERVICES, ApiError, actor, json_body, text
from admin.openapi_schemas import obj
from proxy.release.audit import event
from proxy.release.shadow_results import ShadowResults

MAX_ENDPOINT = 512

_S: dict[str, Any] = {"type": "string"}
_I: dict[str, Any] = {"type": "integer"}
_RATE: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}], "description": "differ / (same + differ)"}
_PAIR: dict[str, Any] = {"type": "array", "items": {"type": "array", "items": _S}}


_SIDE = obj(["slot"], slot=_S, status=_I, headers=_PAIR, body=_S, error=_S)
SCHEMAS: dict[str, Any] = {
    "ShadowEndpoint": obj(
        ["method", "path", "mirrored", "same", "differ", "errors", "skipped", "noise", "top_differences"],
        method=_S,
        path={"type": "string", "description": "The path template: numeric, UUID and hex segments are {id}."},
        mirrored=_I,
        same=_I,
        differ=_I,
        errors=_I,
        skipped=_I,
        diff_rate=_RATE,
        noise={
            "type": "array",
            "items": _S,
            "description": "Places that differ between two answers of the active slot.",
        },
        top_differences={
            "type": "array",
            "items": obj(
                ["where", "count"],
                where={"type": "string", "description": "status, header:NAME or a JSON path"},
                count=_I,
            ),
        },
    ),
    "ShadowSample": obj(
        ["result", "request", "active", "shadow", "differences"],
        result={"type": "string", "enum": ["differ", "error"]},
        detail=_S,
        request=obj(["method", "target", "headers"], method=_S, target=_S, headers=_PAIR),
        active=_SIDE,
        shadow=_SIDE,
        differences={"type": "array", "items": _S, "description": "Where the answers differ (concrete JSON paths)."},
        noise={"type": "array", "items": _S, "description": "Where they differ in places learned as noise."},
    ),
    "Shadow": obj(
        ["slot", "active", "upstreams", "percent", "since", "totals", "endpoints"],
        slot={"type": "string", "description": "The slot compared (the idle one)."},
        active=_S,
        upstreams={"type": "array", "items": _S},
        percent={"type": "number"},
        since={"type": "number", "description": "Unix time of the last reset."},
        totals=obj(
            ["mirrored", "same", "differ", "errors", "skipped", "dropped", "diff_rate"],
            mirrored=_I,
            same=_I,
            differ=_I,
            errors=_I,
            skipped=_I,
            dropped=_I,
            diff_rate=_RATE,
        ),
        endpoints={"type": "array", "items": {"$ref": "#/components/schemas/ShadowEndpoint"}},
        samples={"type": "array", "items": {"$ref": "#/components/schemas/ShadowSample"}},
    ),
}


def paths(error: Any) -> dict[str, Any]:
    """The /v1/shadow operations; `error(status)` is openapi.py's error response."""
    ok = {
        "description": "The comparison",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Shadow"}}},
    }
    not_found = {
        "description": "No endpoint of that name has results.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        "/v1/shadow": {
            "get": {
                "operationId": "shadow",
                "summary": "Shadow traffic: how the idle slot answers mirrored requests, per endpoint.",
                "parameters": [
                    {
                        "name": "endpoint",
                        "in": "query",
                        "required": False,
                        "description": 'An endpoint as "METHOD /path/{id}": adds its samples.',
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ENDPOINT},
                    }
                ],
                "responses": {"200": ok, "400": error(400), "401": error(401), "404": not_found},
            },
            "delete": {
                "operationId": "shadow_reset",
                "summary": "Start the shadow comparison afresh (operator; audited with the reason given).",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReasonRequest"}}},
                },
                "responses": {"200": ok, **{str(s): error(s) for s in (400, 401, 403, 413)}},
            },
        }
    }


def _results(request: web.Request) -> ShadowResults:
    results = request.app[SERVICES].shadow
    if results is None:
        raise ApiError(404, "not_found", "shadow traffic is not available in this process")
    return results


async def get_shadow(request: web.Request) -> web.Response:
    results = _results(request)
    given = request.query.getall("endpoint", [])
    if len(given) > 1 or (given and not 1 <= len(given[0]) <= MAX_ENDPOINT):
        raise ApiError(400, "invalid_query", f"endpoint: expected one value of 1..{MAX_ENDPOINT} characters")
    view = results.view()
    if given:
        samples = results.samples(given[0])
        if samples is None:
            raise ApiError(404, "unknown_endpoint", "no shadow results for that endpoint")
        view["samples"] = samples
    return web.json_response(view)


async def delete_shadow(request: web.Request) -> web.Response:
    body = await json_body(request, ("reason",))
    reason = text(body, "reason")
    results = _results(request)
    before = results.view()["totals"]
    results.reset()
    store = request.app[SERVICES].controller.store
    entry = event(store.current, time.time(), "shadow_reset", {"slot": results.slot, "before": before})
    entry.update(actor=actor(request), trigger="api", reason=reason)
    request.app[AUDIT].append(entry)
    return web.json_response(results.view())


def add_shadow_routes(app: web.Application) -> None:
    app.router.add_get("/v1/shadow", get_shadow, name="shadow")
    app.router.add_delete("/v1/shadow", delete_shadow, name="shadow_reset")
