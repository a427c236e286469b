"""The admin API: an aiohttp app on `admin.listen`, JSON in and out.

Errors are always `{"error": {"code": "...", "message": "..."}}`. Every mutation goes through
`Controller` (the one publish function); handlers only parse, call, and render.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.control import Conflict, Controller, UnknownSlot
from proxy.settings import parse_duration
from proxy.state import Snapshot

log = logging.getLogger("slotswitch.admin")

CONTROLLER = web.AppKey("controller", Controller)
TOKEN = web.AppKey("token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to a JSON error (one place), and check the bearer token."""
    token = request.app[TOKEN]
    if token and request.path != "/v1/health":
        given = request.headers.get("Authorization", "")
        # Constant-time comparison; the token itself is never logged.
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            resp = error_response(401, "unauthorized", "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="slotswitch"'
            return resp
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except Conflict as exc:
        return error_response(412, "generation_mismatch", str(exc))
    except UnknownSlot as exc:
        return error_response(404, "unknown_slot", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if "Allow" in exc.headers:  # a 405 names the methods that are allowed (RFC 9110 §15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"{name}: required")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(400, "invalid_field", f"{name}: expected {kind.__name__}")
    return value


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    try:
        return int(raw.strip().strip('"'))
    except ValueError:
        raise ApiError(400, "invalid_if_match", "If-Match must be a generation number") from None


def status_json(snap: Snapshot) -> dict[str, Any]:
    slots = {}
    for name, route in snap.routes.items():
        rt = route.runtime
        slots[name] = {
            "upstreams": [p.url for p in route.pools],
            "in_flight": rt.in_flight,
            "requests": rt.requests,
            "errors": dict(rt.errors),
            "drain": dict(rt.drain),
            "weight": 100 if name == snap.active else 0,
        }
    return {
        "active": snap.active,
        "previous": snap.previous,
        "generation": snap.generation,
        "slots": slots,
        "last_change": {"by": snap.changed_by, "reason": snap.reason, "at": snap.changed_at},
    }


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status_json(request.app[CONTROLLER].store.current))


async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def post_switch(request: web.Request) -> web.Response:
    body = await _json_body(request)
    slot = _field(body, "slot", str, required=True)
    reason = _field(body, "reason", str) or ""
    raw_timeout = body.get("drain_timeout")
    try:
        drain_timeout = None if raw_timeout is None else parse_duration(raw_timeout)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"drain_timeout: {exc}") from None
    result = request.app[CONTROLLER].switch(
        slot, actor=_actor(request), reason=reason, drain_timeout=drain_timeout, expect=_if_match(request)
    )
    return web.json_response({"changed": result.changed, "from": result.previous, **status_json(result.snapshot)})


async def post_rollback(request: web.Request) -> web.Response:
    body = await _json_body(request)
    reason = _field(body, "reason", str) or ""
    result = request.app[CONTROLLER].rollback(actor=_actor(request), reason=reason, expect=_if_match(request))
    return web.json_response({"changed": result.changed, "from": result.previous, **status_json(result.snapshot)})


def _actor(request: web.Request) -> str:
    return "admin-token" if request.app[TOKEN] else "loopback"


def make_admin_app(controller: Controller, token: str) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth])
    app[CONTROLLER] = controller
    app[TOKEN] = token
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", get_health)
    app.router.add_post("/v1/switch", post_switch)
    app.router.add_post("/v1/rollback", post_rollback)
    return app
