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
from admin.api import DURATION, IF_MATCH, MAX_SECONDS, MAX_TEXT, MAX_UPSTREAMS, POSITIVE_DURATION, UPSTREAM_URL
from admin.codes import ERROR_CODES, JUDGE_STATES, PHASES
from admin.codes import listing as _listing
from proxy.release.audit import KEEP

Json = dict[str, Any]

_REF = "#/components/schemas/"


def _ref(name: str) -> Json:
    return {"$ref": _REF + name}


def _obj(required: list[str], **properties: Json) -> Json:
    return {"type": "object", "required": required, "properties": properties}


def _closed(schema: Json) -> Json:
    """A request body: unknown fields are refused (400 unknown_field)."""
    return {**schema, "additionalProperties": False}


def _nullable(schema: Json) -> Json:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Json = {"type": "string"}
INT: Json = {"type": "integer"}
NUMBER: Json = {"type": "number"}
BOOL: Json = {"type": "boolean"}
ANY_OBJECT: Json = {"type": "object"}
INT_MAP: Json = {"type": "object", "additionalProperties": INT}
REASON: Json = {"type": "string", "maxLength": MAX_TEXT, "description": "Why; recorded with the change."}

SCHEMAS: Json = {
    "Error": _obj(
        ["error"],
        error=_obj(
            ["code", "message"],
            code={"type": "string", "description": "One of " + _listing(ERROR_CODES) + "."},
            message=STRING,
            reasons={"type": "array", "items": STRING},
        ),
    ),
    "Judge": {
        "description": "The judge state contract: one state for the judge, with its slot, since when, why "
        "and the numbers so far.",
        **_obj(
            ["state", "slot", "since", "on_inconclusive", "reasons", "numbers", "watch_until"],
            state={"type": "string", "enum": list(JUDGE_STATES), "description": _listing(JUDGE_STATES)},
            slot={**_nullable(STRING), "description": "The slot judged (or that failed or passed)."},
            since={**_nullable(NUMBER), "description": "When this state began (epoch seconds)."},
            generation={"type": "integer", "description": "The generation that began the judged episode."},
            on_inconclusive={"type": "string", "enum": ["hold", "rollback"]},
            reasons={"type": "array", "items": STRING},
            numbers=ANY_OBJECT,
            watch_until={**_nullable(NUMBER), "description": "When the watch ends (epoch seconds); null: no end."},
            watching=_nullable(STRING),
        ),
    },
    "Duration": {
        "description": "Seconds, or a string like 250ms, 30s, 2m, 1h.",
        "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_SECONDS}, {"type": "string", "pattern": DURATION}],
    },
    "PositiveDuration": {
        "description": "A duration greater than zero.",
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
            {"type": "string", "pattern": POSITIVE_DURATION},
        ],
    },
    "SwitchRequest": _closed(_obj(["slot"], slot=STRING, reason=REASON, drain_timeout=_ref("Duration"), force=BOOL)),
    "ReasonRequest": _closed(_obj([], reason=REASON)),
    "RampRequest": _closed(
        _obj(
            ["slot"],
            slot=STRING,
            steps={
                "type": "array",
                "description": "Percentages of new traffic for the slot, in any order; 100 is added when missing.",
                "items": {"type": "integer", "minimum": 1, "maximum": 100},
                "minItems": 1,
                "maxItems": 100,
                "uniqueItems": True,
            },
            interval=_ref("PositiveDuration"),
            force=BOOL,
            reason=REASON,
        )
    ),
    "DeployRequest": _closed(
        _obj(
            ["upstreams"],
            upstreams={
                "type": "array",
                "items": {"type": "string", "pattern": UPSTREAM_URL},
                "minItems": 1,
                "maxItems": MAX_UPSTREAMS,
            },
            reason=REASON,
        )
    ),
    "AlertmanagerWebhook": {
        "description": "Alertmanager webhook payload, version 4. Unknown keys are accepted (Grafana sends more).",
        **_obj(
            ["version", "status", "alerts"],
            version={"type": "string", "enum": ["4"]},  # any other version is a 400 (admin/alerts.py)
            groupKey=STRING,
            truncatedAlerts={"type": "integer", "minimum": 0},
            status={"type": "string", "enum": ["firing", "resolved"]},
            receiver=STRING,
            groupLabels={"type": "object", "additionalProperties": STRING},
            commonLabels={"type": "object", "additionalProperties": STRING},
            commonAnnotations={"type": "object", "additionalProperties": STRING},
            externalURL=STRING,
            alerts={"type": "array", "items": _ref("Alert")},
        ),
    },
    "Alert": _obj(
        ["status", "labels"],
        status={"type": "string", "enum": ["firing", "resolved"]},
        labels={"type": "object", "additionalProperties": STRING},
        annotations={"type": "object", "additionalProperties": STRING},
        startsAt=STRING,
        endsAt=STRING,
        generatorURL=STRING,
        fingerprint=STRING,
    ),
    "Upstream": _obj(
        ["url", "healthy"],
        url=STRING,
        state={"type": "string", "description": "pending (not checked yet), up, down, or down (passive)."},
        healthy=BOOL,
        checks={"type": "array"},
        checked_at=_nullable(NUMBER),
    ),
    "Slot": _obj(
        ["upstreams", "healthy", "in_flight", "requests", "errors", "drain", "weight"],
        upstreams={"type": "array", "items": _ref("Upstream")},
        healthy=BOOL,
        in_flight=INT,
        requests=INT,
        upstream_5xx={"type": "integer", "description": "5xx answered by the slot's upstreams (not the proxy's own)."},
        upstream_4xx={"type": "integer", "description": "4xx answered by the slot's upstreams."},
        errors=INT_MAP,
        drain=_obj(["state"], state=STRING),
        weight={"type": "integer", "minimum": 0, "maximum": 100},
    ),
    "Ramp": _obj(
        ["slot", "steps", "step", "percent", "interval_s", "paused"],
        slot=STRING,
        steps={"type": "array", "items": INT},
        step=INT,
        percent=INT,
        interval_s=NUMBER,
        paused=BOOL,
        next_step_in_s=_nullable(NUMBER),
        held={**_nullable(STRING), "description": "Why a step that is due has not advanced."},
        note=STRING,
    ),
    "Status": _obj(
        ["active", "previous", "generation", "phase", "weights", "ramp", "analysis", "slots", "last_change"],
        active=STRING,
        previous=_nullable(STRING),
        generation={"type": "integer", "minimum": 1},
        phase={"type": "string", "enum": list(PHASES), "description": _listing(PHASES)},
        weights=INT_MAP,
        ramp=_nullable(_ref("Ramp")),
        split={
            "type": "object",
            "description": "The split the traffic got since the weights last changed, next to the configured "
            "one (percent), and a warning when they are far apart.",
        },
        failed={"type": "object", "description": "Slots that failed analysis, with why (until redeployed or forced)."},
        analysis={
            "type": "object",
            "description": "The judge: `judge` holds the judge state contract (see Judge).",
            "properties": {"judge": _ref("Judge")},
        },
        slots={"type": "object", "additionalProperties": _ref("Slot")},
        last_change=_obj(
            ["action", "trigger", "by", "reason", "at"],
            action=STRING,
            trigger=STRING,
            by=STRING,
            reason=STRING,
            at=NUMBER,
        ),
        tls=_nullable(
            _obj(
                ["certificates"],
                certificates={
                    "type": "array",
                    "items": _obj(
                        ["name", "names", "file", "not_after", "expires_in_s"],
                        name=STRING,
                        names={"type": "array", "items": STRING},
                        file=STRING,
                        not_after=STRING,
                        expires_in_s=INT,
                    ),
                },
            )
        ),
    ),
    "Change": {
        "description": "The status after the call, plus whether it changed anything and the slot active before.",
        "allOf": [
            _ref("Status"),
            _obj(
                ["changed", "from"],
                changed=BOOL,
                message={"type": "string", "description": 'Why nothing changed, e.g. "already rolled back to blue".'},
                **{"from": STRING},
            ),
        ],
    },
    "Routing": _obj(["active", "weights"], active=STRING, weights=INT_MAP),
    "HistoryEntry": _obj(
        ["time", "actor", "action", "from", "to", "reason", "generation", "trigger", "details", "in_flight", "outcome"],
        time={"type": "string", "format": "date-time"},
        actor={"type": "string", "description": "The token's name (never its secret), loopback, or a component."},
        action=STRING,
        reason=STRING,
        generation=INT,
        trigger=STRING,
        details=ANY_OBJECT,
        in_flight=INT_MAP,
        outcome={"type": "string", "enum": ["applied", "refused"]},
        status={"type": "integer", "description": "Refused entries: the HTTP status answered."},
        error=_obj(["code", "message"], code=STRING, message=STRING),
        **{"from": _nullable(_ref("Routing")), "to": _nullable(_ref("Routing"))},
    ),
    "History": _obj(["entries"], entries={"type": "array", "items": _ref("HistoryEntry")}),
    **shadow.SCHEMAS,
}

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
    response: Json = {"description": _ERRORS[status], "content": {"application/json": {"schema": _ref("Error")}}}
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
        "requestBody": {"required": required, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {
            "200": _json("Done (or nothing to do: changed is false).", _ref("Change")),
            **{str(s): _error(s) for s in (400, 401, 403, *errors, 413, 503)},
        },
        **extra,
    }


_STATE = (409, 412)
_SLOT = (404, 409, 412)

PATHS: Json = {
    "/v1/status": {
        "get": _read("status", "Routing state, weights, per-slot health and counts.", _json("Status", _ref("Status")))
    },
    "/v1/health": {
        "get": _read(
            "health",
            "Liveness of the admin API (no token needed).",
            _json("OK", _obj(["status"], status=STRING)),
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
            _json("History", _ref("History")),
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
            _json("Who", _obj(["name", "role"], name=STRING, role={"type": "string", "enum": ["viewer", "operator"]})),
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
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AlertmanagerWebhook")}}},
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
