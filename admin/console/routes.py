"""The console's routes: the page and its files (public), who am I, and the event stream.

The static files are read once, at start, from the package (admin/console/static/), and served
from memory with their security headers; nothing else on disk is reachable through these routes.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files

from aiohttp import web

from admin.api import AUDIT, AUTH, SERVICES, ApiError, Handler
from admin.console.frame import Sampler
from admin.console.stream import Broadcaster

# Not even an inline style: console.js sets sizes through the CSSOM, which CSP does not restrict.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC = {  # path -> (route name, file in static/, content type); admin.api.PUBLIC lists these paths
    "/ui": ("console", "index.html", "text/html; charset=utf-8"),
    "/ui/console.css": ("console_css", "console.css", "text/css; charset=utf-8"),
    "/ui/console.js": ("console_js", "console.js", "text/javascript; charset=utf-8"),
    "/ui/favicon.svg": ("console_icon", "favicon.svg", "image/svg+xml"),
}
WRITE_TIMEOUT = 30.0  # a stream whose reader takes no bytes for this long is closed

CONSOLE = web.AppKey("console", Broadcaster)


def _load() -> dict[str, tuple[str, bytes, str]]:
    folder = files("admin.console") / "static"
    return {path: (name, (folder / file).read_bytes(), kind) for path, (name, file, kind) in STATIC.items()}


def _static_handler(body: bytes, kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={**SECURITY_HEADERS, "Content-Type": kind})

    return handler


async def get_whoami(request: web.Request) -> web.Response:
    """The caller's token name and role (the console shows buttons to operators only)."""
    principal = request.app[AUTH].identify(request.headers.get("Authorization"))
    if principal is None:  # `trust` already refused it; kept for a direct call
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")
    return web.json_response({"name": principal.name, "role": principal.role})


async def get_events(request: web.Request) -> web.StreamResponse:
    """The live state as server-sent events: `backlog` once, then `state` about once a second."""
    hub = request.app[CONSOLE]
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a buffering reverse proxy in front would hold the frames
        }
    )
    await response.prepare(request)
    listener = hub.subscribe()
    try:
        while (chunk := await listener.next()) is not None:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(chunk)
    except (ConnectionError, TimeoutError):
        pass  # the reader went away, or stopped reading
    finally:
        hub.unsubscribe(listener)
    return response


def add_console_routes(app: web.Application) -> None:
    """The routes; the broadcaster is made when the app starts (it reads the app's services)."""

    async def open_hub(app: web.Application) -> None:
        hub = Broadcaster(Sampler(app[SERVICES], app[AUDIT]))
        app[SERVICES].controller.store.subscribe(lambda old, new: hub.wake())
        app[CONSOLE] = hub

    async def close_streams(app: web.Application) -> None:
        await app[CONSOLE].close()

    app.on_startup.append(open_hub)
    app.on_shutdown.append(close_streams)
    for path, (name, body, kind) in _load().items():
        app.router.add_get(path, _static_handler(body, kind), name=name)
    app.router.add_get("/v1/whoami", get_whoami, name="whoami")
    app.router.add_get("/v1/events", get_events, name="events")
