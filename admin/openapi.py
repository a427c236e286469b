"""The admin API's OpenAPI 3.1 document, written by hand; served at GET /openapi.json.

Rules that keep it true:
- Request bodies use the same patterns and limits as the handlers (admin/api.py), and the
  handlers take their allowed field names from here (`body_fields`): a field the document does
  not list is refused with 400, and every field it lists is accepted.
- Every route registered in the app is documented (a test checks it). `document_for(app)` serves
  only the operations the app has, so an operation documented ahead of its handler (POST
  /v1/alerts) appears once the route is registered.
- Every status an operation can answer is listed; errors share one schema. Every change (and the
  history, which fleet mode reads from Redis) may answer 503 state_store_unavailable: in fleet
  mode every change goes through the shared store (Services.mutate), on any route.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin import shadow
from admin.api import IF_MATCH
from admin.openapi_schemas import ANY_OBJECT, STRING, Json, obj, ref
from admin.openapi_schemas import SCHEMAS as _CORE
from proxy.release.audit import KEEP

SCHEMAS: Json = {**_CORE, **shadow.SCHEMAS}  # every components/schemas entry

_ERRORS = {
    400: "The request is malformed: bad JSON, an unknown or invalid field, a bad If-Match or query.",
    401: "No bearer token, or a wrong one.",
    403: "The token's role (viewer) may only read.",
    404: "No slot of that name.",
    409: "Refused in this state (a failing health gate, no ramp in progress, a slot taking traffic...).",
    412: "If-Match names a generation that is no longer the current one; nothing changed.",
    413: "The request body is too large.",
    503: "Fleet mode (state.backend: redis): the shared state store cannot be reached (code "
    "state_store_unavailable); a change was not applied on any replica. Retry later.",
}


def _error(status: int) -> Json:
    response: Json = {"description": _ERRORS[status], "content": {"application/json": {"schema": ref("Error")}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    return response


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


IF_MATCH_PARAM: Json = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Apply only if the current generation is this one (else 412); "*" matches any.',
    "schema": {"type": "string", "pattern": IF_MATCH},
}


def _file(kind: str) -> Json:
    return {"description": kind, "content": {kind: {"schema": STRING}}}


def _read(op_id: str, summary: str, ok: Json, errors: tuple[int, ...] = (401,), **extra: Any) -> Json:
    return {
        "operationId": op_id,
        "summary": summary,
        "responses": {"200": ok, **{str(s): _error(s) for s in errors}},
        **extra,
    }


def _change(op_id: str, summary: str, body: str, *, required: bool, errors: tuple[int, ...], **extra: Any) -> Json:
    """A mutation: operator role, optional If-Match, a JSON body, the new status back."""
    return {
        "operationId": op_id,
        "summary": summary,
        "parameters": [IF_MATCH_PARAM, *extra.pop("parameters", [])],
        "requestBody": {"required": required, "content": {"application/json": {"schema": ref(body)}}},
        "responses": {
            "200": _json("Done (or nothing to do: changed is false).", ref("Change")),
            **{str(s): _error(s) for s in (400, 401, 403, *errors, 413, 503)},
        },
        **extra,
    }


_STATE = (409, 412)
_SLOT = (404, 409, 412)

PATHS: Json = {
    "/v1/status": {
        "get": _read("status", "Routing state, weights, per-slot health and counts.", _json("Status", ref("Status")))
    },
    "/v1/health": {
        "get": _read(
            "health",
            "Liveness of the admin API (no token needed).",
            _json("OK", obj(["status"], status=STRING)),
            (),
            security=[],
        )
    },
    "/metrics": {
        "get": _read(
            "metrics",
            "Prometheus metrics (text exposition format 0.0.4).",
            {"description": "Metrics", "content": {"text/plain": {"schema": STRING}}},
        )
    },
    "/v1/history": {
        "get": _read(
            "history",
            "Audit log entries, newest first: applied and refused changes.",
            _json("History", ref("History")),
            (400, 401, 503),  # 503: fleet mode reads the shared audit stream
            parameters=[
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": KEEP, "default": 50},
                }
            ],
        )
    },
    "/openapi.json": {
        "get": _read("openapi", "This document (no token needed).", _json("OpenAPI 3.1", ANY_OBJECT), (), security=[])
    },
    "/v1/switch": {
        "post": _change(
            "switch", "Make a slot active; the old one drains.", "SwitchRequest", required=True, errors=_SLOT
        )
    },
    "/v1/rollback": {
        "post": _change(
            "rollback", "All new traffic back to the previous slot.", "ReasonRequest", required=False, errors=_STATE
        )
    },
    "/v1/abort": {
        "post": _change(
            "abort", "Abort a ramp or switch (same as rollback).", "ReasonRequest", required=False, errors=_STATE
        )
    },
    "/v1/ramp": {
        "post": _change(
            "ramp", "Shift traffic to a slot in percentage steps.", "RampRequest", required=True, errors=_SLOT
        )
    },
    "/v1/pause": {
        "post": _change("pause", "Freeze the ramp at its current step.", "ReasonRequest", required=False, errors=_STATE)
    },
    "/v1/resume": {
        "post": _change("resume", "Continue a paused ramp.", "ReasonRequest", required=False, errors=_STATE)
    },
    "/v1/promote": {
        "post": _change("promote", "Advance the ramp one step now.", "ReasonRequest", required=False, errors=_STATE)
    },
    "/v1/slots/{slot}": {
        "put": _change(
            "deploy",
            "Point the idle slot at new upstream URLs.",
            "DeployRequest",
            required=True,
            errors=_SLOT,
            parameters=[{"name": "slot", "in": "path", "required": True, "schema": STRING}],
        )
    },
    "/v1/whoami": {
        "get": _read(
            "whoami",
            "The caller's token name (never its secret) and role.",
            _json("Who", obj(["name", "role"], name=STRING, role={"type": "string", "enum": ["viewer", "operator"]})),
        )
    },
    "/v1/events": {
        "get": _read(
            "events",
            "The live state as server-sent events, for the console: a `backlog` event (recent chart points), "
            "then a `state` event about once a second and at once after a change (status, per-slot rates, the "
            "judge, recent history). The stream stays open.",
            {"description": "An event stream", "content": {"text/event-stream": {"schema": STRING}}},
        )
    },
    **{
        path: {"get": _read(op_id, summary, _file(kind), (), security=[])}
        for path, op_id, summary, kind in (
            ("/ui", "console", "The web console's page (no token needed; its data needs one).", "text/html"),
            ("/ui/console.css", "console_css", "The console's style sheet.", "text/css"),
            ("/ui/console.js", "console_js", "The console's script.", "text/javascript"),
            ("/ui/favicon.svg", "console_icon", "The console's icon.", "image/svg+xml"),
        )
    },
    **shadow.paths(_error),
    "/v1/alerts": {
        "post": {
            "operationId": "alerts",
            "summary": "Alertmanager webhook receiver: firing alerts may roll back the slot taking new traffic.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("AlertmanagerWebhook")}}},
            "responses": {
                "200": _json("What was done with the alerts.", ANY_OBJECT),
                **{str(s): _error(s) for s in (400, 401, 403, 413, 503)},
            },
        }
    },
}

DOCUMENT: Json = {
    "openapi": "3.1.0",
    "info": {
        "title": "slotswitch admin API",
        "version": "1",
        "description": "Blue-green switching: status, switch, rollback, ramps, deploys, history. Viewer tokens may "
        'only read (GET); operator tokens may do everything. Errors are always {"error": {"code", "message"}}.',
    },
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}


def body_fields(schema: str) -> tuple[str, ...]:
    """The fields a request body may carry, as documented."""
    return tuple(SCHEMAS[schema]["properties"])


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(path template, lower-case method) of every route the app serves, HEAD excluded."""
    return {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }


def document_for(app: web.Application) -> Json:
    """DOCUMENT limited to the operations `app` serves."""
    served = registered(app)
    paths = {}
    for path, operations in PATHS.items():
        kept = {method: op for method, op in operations.items() if (path, method) in served}
        if kept:
            paths[path] = kept
    return {**DOCUMENT, "paths": paths}
