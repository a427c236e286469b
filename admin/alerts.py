"""POST /v1/alerts: the Alertmanager webhook receiver (payload version "4"); a firing alert may roll back.

An alert rolls back (Controller.rollback, trigger "alert", counted as reason "alert") when all hold:
- it is firing (resolved alerts are ignored);
- it carries the opt-in label `alerts.rollback_label` = `alerts.rollback_value`
  (default slotswitch_rollback="true");
- it was not acted on before: the same fingerprint + startsAt is remembered for `alerts.dedupe_ttl`
  (at most `alerts.dedupe_size` of them), since Alertmanager re-sends every repeat_interval;
- the routing state has something new to undo: not already rolled back, and, if the alert has a
  `slot` label, that slot is the one taking new traffic (the ramp's target during a ramp, else the
  active slot).

The payload is checked against its OpenAPI schema (admin/openapi.py, AlertmanagerWebhook): the
keys it names must have the documented types, and other keys are accepted (Grafana sends more).
The answer is always quick: 200 with {"rolled_back": bool, "ignored": [reasons], "generation": n},
or a 400 JSON error for a malformed payload. Authentication and roles are the middleware's.
In fleet mode the rollback goes through the shared store (Services.mutate) and so applies to
every replica; while the store is unreachable the answer is 503, which Alertmanager retries.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from aiohttp import web

from admin.api import MAX_TEXT, SERVICES, ApiError, actor, json_body
from proxy.release.control import Conflict, Refused

log = logging.getLogger("slotswitch.alerts")

STATUSES = ("firing", "resolved")
_TOP_STRINGS = ("groupKey", "receiver", "externalURL")
_TOP_MAPS = ("groupLabels", "commonLabels", "commonAnnotations")
_ALERT_STRINGS = ("startsAt", "endsAt", "generatorURL", "fingerprint")


class Seen:
    """Alerts already acted on, by (fingerprint, startsAt): bounded in size and in age."""

    def __init__(self) -> None:
        self._at: OrderedDict[tuple[str, str], float] = OrderedDict()  # oldest first

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def expire(self, now: float, ttl: float) -> None:
        while self._at and now - next(iter(self._at.values())) > ttl:
            self._at.popitem(last=False)

    def add(self, key: tuple[str, str], now: float, size: int) -> None:
        self._at.pop(key, None)
        self._at[key] = now
        while len(self._at) > size:
            self._at.popitem(last=False)


SEEN = web.AppKey("alerts_seen", Seen)


# -- validation -------------------------------------------------------------------------------


def _bad(where: str, message: str) -> ApiError:
    return ApiError(400, "invalid_payload", f"{where}: {message}")


def _string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(where, "expected an object of strings")
    return value


def _status(value: object, where: str) -> str:
    if value not in STATUSES:
        raise _bad(where, "expected firing or resolved")
    return str(value)


def validate(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The payload's alerts, each checked; ApiError(400) for anything the schema refuses."""
    if body.get("version") != "4":
        raise _bad("version", f'expected "4" (Alertmanager webhook payload v4), got {body.get("version")!r}')
    _status(body.get("status"), "status")
    for key in _TOP_STRINGS:
        if key in body and not isinstance(body[key], str):
            raise _bad(key, "expected a string")
    for key in _TOP_MAPS:
        if key in body:
            _string_map(body[key], key)
    truncated = body.get("truncatedAlerts", 0)
    if isinstance(truncated, float) and truncated.is_integer():
        truncated = int(truncated)  # JSON Schema's integer: 5.0 is one
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise _bad("truncatedAlerts", "expected a count (an integer >= 0)")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise _bad("alerts", "expected a list of alerts")
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise _bad(where, "expected an object")
        _status(alert.get("status"), f"{where}.status")
        if "labels" not in alert:
            raise _bad(f"{where}.labels", "required")
        _string_map(alert["labels"], f"{where}.labels")
        if "annotations" in alert:
            _string_map(alert["annotations"], f"{where}.annotations")
        for key in _ALERT_STRINGS:
            if key in alert and not isinstance(alert[key], str):
                raise _bad(f"{where}.{key}", "expected a string")
    if truncated:
        log.warning("Alertmanager dropped %d alerts from this notification (max_alerts)", truncated)
    return alerts


def fingerprint(alert: dict[str, Any]) -> str:
    """Alertmanager's fingerprint, or (for senders without one) a hash of the sorted labels."""
    given = alert.get("fingerprint")
    if given:
        return str(given)
    labels = sorted(alert["labels"].items())
    return hashlib.sha256(repr(labels).encode()).hexdigest()[:16]


# -- the handler ------------------------------------------------------------------------------


async def post_alerts(request: web.Request) -> web.Response:
    body = await json_body(request)  # any keys: the payload is defined by Alertmanager, not by us
    alerts = validate(body)
    services = request.app[SERVICES]
    controller = services.controller
    policy = controller.store.current.settings.alerts
    seen = request.app[SEEN]
    now = time.monotonic()
    seen.expire(now, policy.dedupe_ttl)
    rolled_back = False
    ignored: list[str] = []
    for alert in alerts:
        labels: dict[str, str] = alert["labels"]
        name = labels.get("alertname", "unnamed alert")
        fp = fingerprint(alert)
        key = (fp, str(alert.get("startsAt", "")))
        tag = f"{name} [{fp}]"
        snap = controller.store.current
        new_traffic = snap.ramp.target if snap.ramp is not None else snap.active
        why = None
        if alert["status"] != "firing":
            why = "resolved"
        elif labels.get(policy.rollback_label) != policy.rollback_value:
            why = f"no {policy.rollback_label}={policy.rollback_value!r} label"
        elif key in seen:
            why = "duplicate: already acted on"
        elif snap.phase == "rolled_back":
            why = f"already rolled back (generation {snap.generation})"
        elif "slot" in labels and labels["slot"] != new_traffic:
            why = f"slot {labels['slot']!r} is not the slot taking new traffic ({new_traffic})"
        if why is not None:
            ignored.append(f"{tag}: {why}")
            continue
        summary = (alert.get("annotations") or {}).get("summary", "")
        reason = (f"alert {name}: {summary}" if summary else f"alert {name}")[:MAX_TEXT]
        details: dict[str, object] = {
            "alertname": name,
            "labels": dict(labels),
            "fingerprint": fp,
            "startsAt": alert.get("startsAt"),
            "slot": new_traffic,
        }
        try:
            rollback = partial(
                controller.rollback,
                actor=actor(request),
                trigger="alert",
                reason=reason,
                expect=snap.generation,
                details=details,
            )
            await services.mutate(rollback)  # in fleet mode, for every replica (proxy.fleet.sync)
        except (Refused, Conflict) as exc:
            ignored.append(f"{tag}: not rolled back: {exc}")
            continue
        seen.add(key, now, policy.dedupe_size)
        rolled_back = True
        log.error("rollback by alert %s from slot %s (fingerprint %s, by %s)", name, new_traffic, fp, actor(request))
    if ignored:
        log.info("alerts ignored: %s", "; ".join(ignored))
    generation = controller.store.current.generation
    if rolled_back and services.synced is not None:
        await services.synced(generation)  # with worker processes, answer once they all route by it
    return web.json_response({"rolled_back": rolled_back, "ignored": ignored, "generation": generation})


def add_alert_routes(app: web.Application) -> None:
    """Register POST /v1/alerts (operationId "alerts") and its dedupe memory on the admin app."""
    app[SEEN] = Seen()
    app.router.add_post("/v1/alerts", post_alerts, name="alerts")
