"""Admin API handlers: parse the request, call the controller, render JSON.

Every mutation goes through `Controller` (the one publish function), called through
`Services.mutate` (in fleet mode, the shared store's compare-and-set), and accepts
`If-Match: <generation>`; a stale generation gets 412 and changes nothing. A handler reads
If-Match and its body before it awaits anything, so a bad request is refused before any work.
The fields each body may carry come from its schema in admin/openapi.py, so the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import web

from admin.alerts import add_alert_routes
from admin.api import (
    AUDIT,
    MAX_UPSTREAMS,
    SERVICES,
    UPSTREAM_URL,
    ApiError,
    actor,
    duration,
    field,
    if_match,
    json_body,
    text,
)
from admin.console import add_console_routes
from admin.metrics import exposition
from admin.openapi import body_fields, document_for
from admin.shadow import add_shadow_routes
from admin.views import change_json, status_json
from proxy.release.audit import KEEP
from proxy.release.control import Controller, Result

SWITCH = body_fields("SwitchRequest")
REASON = body_fields("ReasonRequest")
RAMP = body_fields("RampRequest")
DEPLOY = body_fields("DeployRequest")
DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_INTERVAL = 30.0
HISTORY_DEFAULT = 50


async def _result(request: web.Request, result: Result) -> web.Response:
    services = request.app[SERVICES]
    if result.changed and services.synced is not None:
        # With worker processes, answer only once every worker routes by the new state.
        await services.synced(result.snapshot.generation)
    return web.json_response(change_json(services, result))


async def get_status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response({**status_json(services), "state_store": services.state_store()})


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    return exposition(request.app[SERVICES].metrics)  # admin/metrics.py: where /metrics is served


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(document_for(request.app))


async def get_history(request: web.Request) -> web.Response:
    """The newest `limit` audit entries (applied and refused changes), newest first."""
    given = request.query.getall("limit", [str(HISTORY_DEFAULT)])
    if len(given) != 1 or not re.fullmatch(r"[0-9]{1,4}", given[0]) or not 1 <= int(given[0]) <= KEEP:
        raise ApiError(400, "invalid_query", f"limit: expected one integer in 1..{KEEP}")
    limit = int(given[0])
    fleet = await request.app[SERVICES].history(limit)  # fleet mode: every replica's entries
    return web.json_response({"entries": fleet if fleet is not None else request.app[AUDIT].newest(limit)})


async def post_switch(request: web.Request) -> web.Response:
    expect = if_match(request)
    body = await json_body(request, SWITCH)
    slot = field(body, "slot", str, required=True)
    force = bool(field(body, "force", bool))
    reason = text(body, "reason")
    drain_timeout = duration(body, "drain_timeout")
    services = request.app[SERVICES]
    if not force and slot != services.controller.store.current.active:
        await services.prepare(slot)  # the gate decides on checks run now
    who = actor(request)
    result = await services.mutate(
        lambda: services.controller.switch(
            slot, actor=who, reason=reason, drain_timeout=drain_timeout, expect=expect, force=force
        )
    )
    return await _result(request, result)


Verb = Callable[[Controller, str, str, int | None], Result]  # (controller, actor, reason, expect)


async def _reason_only(request: web.Request, verb: Verb) -> web.Response:
    """A change whose body carries only an optional reason: rollback, pause, resume, promote."""
    expect = if_match(request)
    body = await json_body(request, REASON)
    services, who, reason = request.app[SERVICES], actor(request), text(body, "reason")
    result = await services.mutate(lambda: verb(services.controller, who, reason, expect))
    return await _result(request, result)


async def post_rollback(request: web.Request) -> web.Response:
    return await _reason_only(
        request, lambda c, who, reason, expect: c.rollback(actor=who, reason=reason, expect=expect)
    )


def _percent(value: object) -> int | None:
    """An integer in 1..100 (JSON Schema counts 25.0 as an integer, so this does too), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100:
        return value
    return None


def _steps(body: dict[str, object]) -> list[int]:
    """Distinct percentages in 1..100, in any order (they are sorted here)."""
    steps = field(body, "steps", list)
    if steps is None:
        return list(DEFAULT_STEPS)
    ints = [p for p in map(_percent, steps) if p is not None]
    if not steps or len(ints) != len(steps) or len(set(ints)) != len(ints):
        raise ApiError(400, "invalid_field", "steps: expected distinct integer percentages in 1..100")
    return sorted(ints)


async def post_ramp(request: web.Request) -> web.Response:
    expect = if_match(request)
    body = await json_body(request, RAMP)
    slot = field(body, "slot", str, required=True)
    steps = _steps(body)
    interval = duration(body, "interval", positive=True)
    force = bool(field(body, "force", bool))
    reason = text(body, "reason")
    services = request.app[SERVICES]
    if not force:
        await services.prepare(slot)
    who, seconds = actor(request), interval if interval is not None else DEFAULT_INTERVAL
    result = await services.mutate(
        lambda: services.controller.ramp(slot, steps, seconds, actor=who, reason=reason, expect=expect, force=force)
    )
    return await _result(request, result)


async def post_pause(request: web.Request) -> web.Response:
    return await _reason_only(request, lambda c, who, reason, expect: c.pause(actor=who, reason=reason, expect=expect))


async def post_resume(request: web.Request) -> web.Response:
    return await _reason_only(
        request, lambda c, who, reason, expect: c.pause(actor=who, reason=reason, expect=expect, paused=False)
    )


async def post_promote(request: web.Request) -> web.Response:
    return await _reason_only(
        request, lambda c, who, reason, expect: c.promote(actor=who, reason=reason, expect=expect)
    )


async def put_slot(request: web.Request) -> web.Response:
    expect = if_match(request)
    body = await json_body(request, DEPLOY)
    urls = field(body, "upstreams", list, required=True)
    if not 1 <= len(urls) <= MAX_UPSTREAMS or not all(isinstance(u, str) and re.search(UPSTREAM_URL, u) for u in urls):
        raise ApiError(400, "invalid_field", f"upstreams: expected 1..{MAX_UPSTREAMS} URLs like http://host:port")
    services, who, reason = request.app[SERVICES], actor(request), text(body, "reason")
    slot = request.match_info["slot"]
    result = await services.mutate(
        lambda: services.controller.deploy(slot, urls, actor=who, reason=reason, expect=expect)
    )
    return await _result(request, result)


def add_routes(app: web.Application) -> None:
    """Route names are the OpenAPI operationIds and the `action` of a refused change in the audit log."""
    app.router.add_get("/v1/status", get_status, name="status")
    app.router.add_get("/v1/health", get_health, name="health")
    app.router.add_get("/metrics", get_metrics, name="metrics")
    app.router.add_get("/v1/history", get_history, name="history")
    app.router.add_get("/openapi.json", get_openapi, name="openapi")
    app.router.add_post("/v1/switch", post_switch, name="switch")
    app.router.add_post("/v1/rollback", post_rollback, name="rollback")
    app.router.add_post("/v1/abort", post_rollback, name="abort")
    app.router.add_post("/v1/ramp", post_ramp, name="ramp")
    app.router.add_post("/v1/pause", post_pause, name="pause")
    app.router.add_post("/v1/resume", post_resume, name="resume")
    app.router.add_post("/v1/promote", post_promote, name="promote")
    app.router.add_put("/v1/slots/{slot}", put_slot, name="deploy")
    add_shadow_routes(app)  # GET and DELETE /v1/shadow (admin/shadow.py)
    add_alert_routes(app)  # POST /v1/alerts, the Alertmanager webhook (admin/alerts.py)
    add_console_routes(app)  # GET /ui, /v1/whoami, /v1/events: the web console (admin/console/)
