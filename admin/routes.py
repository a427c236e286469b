"""Admin API handlers: parse the request, call the controller, render JSON.

Every mutation goes through `Controller` (the one publish function) and accepts
`If-Match: <generation>`; a stale generation gets 412 and changes nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin.api import SERVICES, ApiError, actor, field, if_match, json_body
from admin.metrics import render
from admin.views import change_json, status_json
from proxy.control import Result
from proxy.settings import parse_duration


def _duration(body: dict[str, Any], name: str) -> float | None:
    raw = body.get(name)
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"{name}: {exc}") from None


def _result(request: web.Request, result: Result) -> web.Response:
    return web.json_response(change_json(request.app[SERVICES], result))


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[SERVICES]))


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def get_metrics(request: web.Request) -> web.Response:
    body = render(request.app[SERVICES].metrics)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def post_switch(request: web.Request) -> web.Response:
    body = await json_body(request)
    services = request.app[SERVICES]
    slot = field(body, "slot", str, required=True)
    force = bool(field(body, "force", bool))
    if not force and slot != services.controller.store.current.active:
        await services.health.run_now(slot)  # the gate decides on checks run now
    result = services.controller.switch(
        slot,
        actor=actor(request),
        reason=field(body, "reason", str) or "",
        drain_timeout=_duration(body, "drain_timeout"),
        expect=if_match(request),
        force=force,
    )
    return _result(request, result)


async def post_rollback(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = request.app[SERVICES].controller.rollback(
        actor=actor(request), reason=field(body, "reason", str) or "", expect=if_match(request)
    )
    return _result(request, result)


async def post_ramp(request: web.Request) -> web.Response:
    body = await json_body(request)
    services = request.app[SERVICES]
    slot = field(body, "slot", str, required=True)
    steps = field(body, "steps", list) or [5, 25, 50, 100]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise ApiError(400, "invalid_field", "steps: expected a list of integer percentages")
    interval = _duration(body, "interval")
    force = bool(field(body, "force", bool))
    if not force:
        await services.health.run_now(slot)
    result = services.controller.ramp(
        slot,
        steps,
        interval if interval is not None else 30.0,
        actor=actor(request),
        reason=field(body, "reason", str) or "",
        expect=if_match(request),
        force=force,
    )
    return _result(request, result)


async def post_pause(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = request.app[SERVICES].controller.pause(
        actor=actor(request), reason=field(body, "reason", str) or "", expect=if_match(request)
    )
    return _result(request, result)


async def post_resume(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = request.app[SERVICES].controller.pause(
        actor=actor(request), reason=field(body, "reason", str) or "", expect=if_match(request), paused=False
    )
    return _result(request, result)


async def post_promote(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = request.app[SERVICES].controller.promote(
        actor=actor(request), reason=field(body, "reason", str) or "", expect=if_match(request)
    )
    return _result(request, result)


async def put_slot(request: web.Request) -> web.Response:
    body = await json_body(request)
    urls = field(body, "upstreams", list, required=True)
    if not all(isinstance(u, str) for u in urls):
        raise ApiError(400, "invalid_field", "upstreams: expected a list of URL strings")
    result = request.app[SERVICES].controller.deploy(
        request.match_info["slot"],
        urls,
        actor=actor(request),
        reason=field(body, "reason", str) or "",
        expect=if_match(request),
    )
    return _result(request, result)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/v1/switch", post_switch)
    app.router.add_post("/v1/rollback", post_rollback)
    app.router.add_post("/v1/abort", post_rollback)
    app.router.add_post("/v1/ramp", post_ramp)
    app.router.add_post("/v1/pause", post_pause)
    app.router.add_post("/v1/resume", post_resume)
    app.router.add_post("/v1/promote", post_promote)
    app.router.add_put("/v1/slots/{slot}", put_slot)
