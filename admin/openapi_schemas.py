"""The admin API's OpenAPI schemas (components/schemas), and the small builders admin/openapi.py and
admin/shadow.py share (admin/openapi.py adds shadow.SCHEMAS to these).

Rules that keep them true: request bodies (`*Request`) are closed (an unknown field is refused with 400
unknown_field) and use the same patterns and limits as the handlers (admin/api.py); the states, phases and
error codes are admin/codes.py's own lists.
"""

from __future__ import annotations

from typing import Any

from admin.api import DURATION, MAX_SECONDS, MAX_TEXT, MAX_UPSTREAMS, POSITIVE_DURATION, UPSTREAM_URL
from admin.codes import ERROR_CODES, JUDGE_STATES, PHASES
from admin.codes import listing as _listing

Json = dict[str, Any]

_REF = "#/components/schemas/"


def ref(name: str) -> Json:
    return {"$ref": _REF + name}


def obj(required: list[str], **properties: Json) -> Json:
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
    "Error": obj(
        ["error"],
        error=obj(
            ["code", "message"],
            code={"type": "string", "description": "One of " + _listing(ERROR_CODES) + "."},
            message=STRING,
            reasons={"type": "array", "items": STRING},
        ),
    ),
    "Judge": {
        "description": "The judge state contract: one state for the judge, with its slot, since when, why "
        "and the numbers so far.",
        **obj(
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
    "SwitchRequest": _closed(obj(["slot"], slot=STRING, reason=REASON, drain_timeout=ref("Duration"), force=BOOL)),
    "ReasonRequest": _closed(obj([], reason=REASON)),
    "RampRequest": _closed(
        obj(
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
            interval=ref("PositiveDuration"),
            force=BOOL,
            reason=REASON,
        )
    ),
    "DeployRequest": _closed(
        obj(
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
        **obj(
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
            alerts={"type": "array", "items": ref("Alert")},
        ),
    },
    "Alert": obj(
        ["status", "labels"],
        status={"type": "string", "enum": ["firing", "resolved"]},
        labels={"type": "object", "additionalProperties": STRING},
        annotations={"type": "object", "additionalProperties": STRING},
        startsAt=STRING,
        endsAt=STRING,
        generatorURL=STRING,
        fingerprint=STRING,
    ),
    "Upstream": obj(
        ["url", "healthy"],
        url=STRING,
        state={"type": "string", "description": "pending (not checked yet), up, down, or down (passive)."},
        healthy=BOOL,
        checks={"type": "array"},
        checked_at=_nullable(NUMBER),
    ),
    "Slot": obj(
        ["upstreams", "healthy", "in_flight", "requests", "errors", "drain", "weight"],
        upstreams={"type": "array", "items": ref("Upstream")},
        healthy=BOOL,
        in_flight=INT,
        requests=INT,
        upstream_5xx={"type": "integer", "description": "5xx answered by the slot's upstreams (not the proxy's own)."},
        upstream_4xx={"type": "integer", "description": "4xx answered by the slot's upstreams."},
        errors=INT_MAP,
        drain=obj(["state"], state=STRING),
        weight={"type": "integer", "minimum": 0, "maximum": 100},
    ),
    "Ramp": obj(
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
    "Status": obj(
        ["active", "previous", "generation", "phase", "weights", "ramp", "analysis", "slots", "last_change"],
        active=STRING,
        previous=_nullable(STRING),
        generation={"type": "integer", "minimum": 1},
        phase={"type": "string", "enum": list(PHASES), "description": _listing(PHASES)},
        weights=INT_MAP,
        ramp=_nullable(ref("Ramp")),
        split={
            "type": "object",
            "description": "The split the traffic got since the weights last changed, next to the configured "
            "one (percent), and a warning when they are far apart.",
        },
        failed={"type": "object", "description": "Slots that failed analysis, with why (until redeployed or forced)."},
        analysis={
            "type": "object",
            "description": "The judge: `judge` holds the judge state contract (see Judge).",
            "properties": {"judge": ref("Judge")},
        },
        slots={"type": "object", "additionalProperties": ref("Slot")},
        last_change=obj(
            ["action", "trigger", "by", "reason", "at"],
            action=STRING,
            trigger=STRING,
            by=STRING,
            reason=STRING,
            at=NUMBER,
        ),
        tls=_nullable(
            obj(
                ["certificates"],
                certificates={
                    "type": "array",
                    "items": obj(
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
            ref("Status"),
            obj(
                ["changed", "from"],
                changed=BOOL,
                message={"type": "string", "description": 'Why nothing changed, e.g. "already rolled back to blue".'},
                **{"from": STRING},
            ),
        ],
    },
    "Routing": obj(["active", "weights"], active=STRING, weights=INT_MAP),
    "HistoryEntry": obj(
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
        error=obj(["code", "message"], code=STRING, message=STRING),
        **{"from": _nullable(ref("Routing")), "to": _nullable(ref("Routing"))},
    ),
    "History": obj(["entries"], entries={"type": "array", "items": ref("HistoryEntry")}),
}
