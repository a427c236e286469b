"""JSON renderings of the routing state for the admin API and the CLI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from admin.api import Services
    from proxy.release.control import Result
    from proxy.routing.state import Snapshot


def _ramp_json(snap: Snapshot) -> dict[str, Any] | None:
    ramp = snap.ramp
    if ramp is None:
        return None
    next_in = max(0.0, ramp.step_started_at + ramp.interval - time.time())
    return {
        "slot": ramp.target,
        "steps": list(ramp.steps),
        "step": ramp.index,
        "percent": ramp.percent,
        "interval_s": ramp.interval,
        "paused": ramp.paused,
        "next_step_in_s": None if ramp.paused else round(next_in, 3),
        "note": "a step advances only on a passing analysis verdict",
    }


def status_json(services: Services) -> dict[str, Any]:
    snap = services.controller.store.current
    weights = snap.weights()
    slots = {}
    for name, route in snap.routes.items():
        rt = route.runtime
        slots[name] = {
            "upstreams": [services.health.describe(name, p) for p in route.pools],
            "healthy": any(p.usable for p in route.pools),
            "in_flight": rt.in_flight,
            "requests": rt.requests,
            "errors": dict(rt.errors),
            "drain": dict(rt.drain),
            "weight": weights[name],
        }
    draining = any(r.runtime.drain.get("state") == "draining" for r in snap.routes.values())
    phase = "switching" if snap.phase == "stable" and draining else snap.phase
    return {
        "active": snap.active,
        "previous": snap.previous,
        "generation": snap.generation,
        "phase": phase,
        "weights": weights,
        "ramp": _ramp_json(snap),
        "analysis": services.analyzer.status(),
        "slots": slots,
        "last_change": {
            "action": snap.action,
            "trigger": snap.trigger,
            "by": snap.changed_by,
            "reason": snap.reason,
            "at": snap.changed_at,
        },
    }


def change_json(services: Services, result: Result) -> dict[str, Any]:
    body = {"changed": result.changed, "from": result.previous.active, **status_json(services)}
    if result.message:
        body["message"] = result.message
    return body
