"""JSON renderings of the routing state for the admin API and the CLI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from admin.api import Services
    from proxy.release.control import Result
    from proxy.routing.state import Snapshot


def _ramp_json(services: Services, snap: Snapshot) -> dict[str, Any] | None:
    ramp = snap.ramp
    if ramp is None:
        return None
    now = time.time()
    next_in = max(0.0, ramp.step_started_at + ramp.interval - now)
    return {
        "slot": ramp.target,
        "steps": list(ramp.steps),
        "step": ramp.index,
        "percent": ramp.percent,
        "interval_s": ramp.interval,
        "paused": ramp.paused,
        "next_step_in_s": None if ramp.paused or not next_in else round(next_in, 3),
        "held": services.analyzer.held(now),
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
            "upstream_5xx": rt.stats.upstream_5xx,
            "upstream_4xx": rt.stats.upstream_4xx,
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
        "ramp": _ramp_json(services, snap),
        "split": services.analyzer.split.status(),
        "analysis": services.analyzer.status(),
        "failed": dict(snap.failed),
        "slots": slots,
        "last_change": {
            "action": snap.action,
            "trigger": snap.trigger,
            "by": snap.changed_by,
            "reason": snap.reason,
            "at": snap.changed_at,
        },
        "tls": tls_json(services),
    }


def tls_json(services: Services) -> dict[str, Any] | None:
    """The listener's certificates and their expiry; None on a plain-HTTP listener."""
    tls = services.controller.server.tls
    if tls is None:
        return None
    now = time.time()
    return {"certificates": [info.as_dict(now) for info in tls.expiries()]}


def change_json(services: Services, result: Result) -> dict[str, Any]:
    body = {"changed": result.changed, "from": result.previous.active, **status_json(services)}
    if result.message:
        body["message"] = result.message
    return body
