"""The admin API: an aiohttp app on `admin.listen`, JSON in and out.

Errors are always `{"error": {"code": "...", "message": "..."}}`. Every mutation goes through
`Controller` (the one publish function); handlers only parse, call, and render.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.analysis import Analyzer
from proxy.control import Conflict, Controller, Invalid, Refused, UnknownSlot
from proxy.health import HealthChecker

log = logging.getLogger("slotswitch.admin")


@dataclass(frozen=True)
class Services:
    """What the admin API drives and reads."""

    controller: Controller
    health: HealthChecker
    analyzer: Analyzer
    metrics: CollectorRegistry


SERVICES = web.AppKey("services", Services)
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
    except Invalid as exc:
        return error_response(400, "invalid_request", str(exc))
    except Refused as exc:
        resp = error_response(409, "refused", str(exc))
        if exc.reasons:
            resp = web.json_response(
                {"error": {"code": "refused", "message": str(exc), "reasons": exc.reasons}}, status=409
            )
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if "Allow" in exc.headers:  # a 405 names the methods that are allowed (RFC 9110 §15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"{name}: required")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(400, "invalid_field", f"{name}: expected {kind.__name__}")
    return value


def if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    try:
        return int(raw.strip().strip('"'))
    except ValueError:
        raise ApiError(400, "invalid_if_match", "If-Match must be a generation number") from None


def actor(request: web.Request) -> str:
    return "admin-token" if request.app[TOKEN] else "loopback"


def make_admin_app(services: Services, token: str) -> web.Application:
    from admin.routes import add_routes

    app = web.Application(middlewares=[errors_and_auth])
    app[SERVICES] = services
    app[TOKEN] = token
    add_routes(app)
    return app
