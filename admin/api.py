"""The admin API: an aiohttp app on `admin.listen`, JSON in and out.

One middleware, `trust`, does for every request, in this order: authenticate (401; not for
PUBLIC paths), check the role (403), run the handler, map any failure to a JSON error (here and
nowhere else), and record a refused change in the audit log. Errors are always
`{"error": {"code": "...", "message": "..."}}` (409s add "reasons"). Every mutation goes through
`Controller` (the one publish function); handlers only parse, call, and render.

Request parsing is as strict as the OpenAPI document (admin/openapi.py), which uses the same
patterns and limits: unknown fields, nulls and out-of-range values are 400s.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from admin.auth import Authenticator
from proxy.fleet.sync import Fleet
from proxy.release.analysis import Analyzer
from proxy.release.audit import AuditLog, refused
from proxy.release.control import Conflict, Controller, Invalid, Refused, StoreUnavailable, UnknownSlot
from proxy.release.gates import Gates
from proxy.release.health import HealthChecker
from proxy.release.shadow_results import ShadowResults
from proxy.settings.types import parse_duration

log = logging.getLogger("slotswitch.admin")


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log (AppRunner's `logger`): a request it cannot parse (a NUL in a header, a bad
    request line) is the client's error, answered 400 by aiohttp, and worth an INFO line without a
    traceback; any other failure keeps its ERROR and traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("malformed admin request: %s", exc_info.message)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


def server_log() -> ServerLog:
    return ServerLog(logging.getLogger("slotswitch.admin.server"), {})


T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """What the admin API drives and reads."""

    controller: Controller
    health: HealthChecker
    analyzer: Analyzer
    metrics: CollectorRegistry
    synced: Callable[[int], Awaitable[float]] | None = None  # waits until all workers route by a generation
    gates: Gates | None = None  # smoke, warm-up and migration gates (proxy/release/gates.py)
    fleet: Fleet | None = None  # fleet mode (state.backend: redis): changes go through the shared store
    shadow: ShadowResults | None = None  # shadow traffic's comparison (GET/DELETE /v1/shadow)

    async def mutate(self, fn: Callable[[], T]) -> T:
        """Apply a controller verb: at once on a single node; in fleet mode through the shared
        store's compare-and-set (proxy.fleet.sync), so it applies to every replica or not at all."""
        if self.fleet is None:
            return fn()
        return await self.fleet.run(fn)

    async def history(self, limit: int) -> list[dict[str, Any]] | None:
        """The fleet's newest audit entries (from the shared stream); None on a single node."""
        return None if self.fleet is None else await self.fleet.history(limit)

    def state_store(self) -> dict[str, object]:
        """/v1/status's "state_store": where the routing state is kept and whether it is reachable."""
        if self.fleet is not None:
            return self.fleet.status()
        snap = self.controller.store.current
        return {"backend": "file", "up": True, "last_error": None, "generation_seen": snap.generation}

    async def prepare(self, slot: str) -> None:
        """Run the checks the gates decide on, now, before a switch or ramp to `slot`."""
        if self.gates is not None:
            await self.gates.prepare(slot)
        else:
            await self.health.run_now(slot)


SERVICES = web.AppKey("services", Services)
AUTH = web.AppKey("auth", Authenticator)
AUDIT = web.AppKey("audit", AuditLog)
ACTOR = web.RequestKey("actor", str)  # the caller's token NAME, set by `trust` before the handler runs

# Served without a token: the console's page and files hold no data (admin/console/routes.py STATIC).
PUBLIC = frozenset({"/v1/health", "/openapi.json", "/ui", "/ui/console.css", "/ui/console.js", "/ui/favicon.svg"})
READS = frozenset({"GET", "HEAD"})

# Shared with the OpenAPI document, so the handlers accept exactly what it describes. Matched with
# re.search, as JSON Schema's `pattern` is.
IF_MATCH = r'^(\*|[0-9]{1,18}|"[0-9]{1,18}")$'
DURATION = r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,9})?(ms|s|m|h)$"
POSITIVE_DURATION = r"^([1-9][0-9]{0,8}(\.[0-9]{1,9})?|0\.[0-9]{0,8}[1-9][0-9]{0,8})(ms|s|m|h)$"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
UPSTREAM_URL = rf"^http://{_LABEL}(\.{_LABEL})*(:{_PORT})?/?$"
MAX_SECONDS = 1e9  # a duration given as a number of seconds; a string one is bounded by its pattern
MAX_TEXT = 1024  # reason
MAX_UPSTREAMS = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        reasons: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reasons = reasons or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.reasons:
            error["reasons"] = self.reasons
        return web.json_response({"error": error}, status=self.status, headers=self.headers)


def error_response(status: int, code: str, message: str) -> web.Response:
    return ApiError(status, code, message).response()


def authorize(request: web.Request) -> None:
    """401 unless the caller has a token (or the API is open on loopback); 403 if its role may not
    use this method. Sets request[ACTOR] to the token's name."""
    principal = request.app[AUTH].identify(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="slotswitch"'},
        )
    request[ACTOR] = principal.name
    if not principal.may(request.method):
        raise ApiError(403, "forbidden", f"token {principal.name!r} has the {principal.role} role: it may only read")


def as_api_error(exc: Exception) -> ApiError | None:
    """The JSON error for a failure, or None for one that is not an error answer (a redirect)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Conflict):
        return ApiError(412, "generation_mismatch", str(exc))
    if isinstance(exc, UnknownSlot):
        return ApiError(404, "unknown_slot", str(exc))
    if isinstance(exc, Invalid):
        return ApiError(400, "invalid_request", str(exc))
    if isinstance(exc, Refused):
        return ApiError(409, "refused", str(exc), reasons=exc.reasons)
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "state_store_unavailable", str(exc))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        # a 405 names the methods that are allowed (RFC 9110 §15.5.6)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return ApiError(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers=headers)
    log.error("admin API: unexpected error", exc_info=exc)
    return ApiError(500, "internal_error", "internal error (see the proxy's log)")


@web.middleware
async def trust(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path not in PUBLIC:
            authorize(request)
        return await handler(request)
    except Exception as exc:  # CancelledError is a BaseException: it passes through
        error = as_api_error(exc)
        if error is None:
            raise
        if error.status < 500 and is_change(request):
            entry = record_refusal(request, error)
            fleet = request.app[SERVICES].fleet
            if fleet is not None:
                await fleet.record(entry)  # the fleet's history shows refusals on every replica
        return error.response()


def is_change(request: web.Request) -> bool:
    """A request to a mutating endpoint (a route that exists, with a method that writes)."""
    return request.method not in READS and request.match_info.http_exception is None


def record_refusal(request: web.Request, error: ApiError) -> dict[str, Any]:
    route = request.match_info.route
    details: dict[str, Any] = {"method": request.method, "path": request.path}
    if error.reasons:
        details["reasons"] = error.reasons
    entry = refused(
        request.app[SERVICES].controller.store.current,
        time.time(),
        actor=request.get(ACTOR, "anonymous"),
        action=route.name or request.path,
        status=error.status,
        code=error.code,
        message=error.message,
        details=details,
    )
    request.app[AUDIT].append(entry)
    return entry


def actor(request: web.Request) -> str:
    return request[ACTOR]


# -- request parsing ----------------------------------------------------------------------------


async def json_body(request: web.Request, allowed: Collection[str] | None = None) -> dict[str, Any]:
    """The request's JSON object ({} without a body); 400 for anything else, or for a field not in
    `allowed` (None: any field, for payloads defined elsewhere, like Alertmanager's)."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; RecursionError: [[[[...]]]]
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ApiError(
            400, "unknown_field", f"unknown fields: {', '.join(unknown)} (allowed: {', '.join(allowed or ())})"
        )
    return body


def field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    """body[name] if it has type `kind`; None when absent (400 if required); null is not a value."""
    if name not in body or (required and body[name] is None):
        if required:
            raise ApiError(400, "missing_field", f"{name}: required")
        return None
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(400, "invalid_field", f"{name}: expected {kind.__name__}")
    return value


def text(body: dict[str, Any], name: str) -> str:
    value: str = field(body, name, str) or ""
    if len(value) > MAX_TEXT:
        raise ApiError(400, "invalid_field", f"{name}: longer than {MAX_TEXT} characters")
    return value


def duration(body: dict[str, Any], name: str, *, positive: bool = False) -> float | None:
    """Seconds from "250ms"/"30s"/"2m"/"1h" or a number of seconds; None when absent."""
    if name not in body:
        return None
    raw = body[name]
    if isinstance(raw, str) and re.search(POSITIVE_DURATION if positive else DURATION, raw):
        return parse_duration(raw.strip())
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if number and (raw > 0 if positive else raw >= 0) and raw <= MAX_SECONDS:  # NaN fails every comparison
        return float(raw)
    bound = "positive" if positive else "non-negative"
    raise ApiError(400, "invalid_field", f"{name}: expected a {bound} duration like 250ms, 30s or 2m, or seconds")


def if_match(request: web.Request) -> int | None:
    """The generation in If-Match, or None (absent or `*`: apply whatever the generation)."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    if not re.search(IF_MATCH, raw):
        raise ApiError(400, "invalid_if_match", 'If-Match must be a generation number (or "*")')
    return None if raw == "*" else int(raw.strip('"'))


def make_admin_app(services: Services, auth: Authenticator, audit: AuditLog) -> web.Application:
    from admin.routes import add_routes

    app = web.Application(middlewares=[trust])
    app[SERVICES] = services
    app[AUTH] = auth
    app[AUDIT] = audit
    add_routes(app)
    return app
