"""Built-in sample upstream apps: what `slotswitch demo` runs, and the tests' real upstreams.

Each app answers for one slot ("blue" answers "v1", "green" answers "v2") and marks every
response with `X-App: <name>`. Routes: `/`, `/health` (flippable with `POST /admin/health?ok=0`),
`/slow?ms=`, `/stream`, `/ws` (echo), `/status/<code>`, `/echo`, `/sink`, `/download?bytes=`,
`POST /admin/errors?percent=N` (from then on `/` answers 500 to N % of requests, evenly spread: a
bad release for `slotswitch demo --scenario bad-release`), and `/admin/connections`, which counts
the TCP connections the app accepted, so tests can check how many upstream connections the proxy really opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PATTERN = bytes(range(256)) * 256  # 64 KiB: the unit of every /download write
BODYLESS = frozenset({204, 304})


@dataclass
class AppState:
    name: str
    body: str
    healthy: bool = True
    fail_percent: int = 0  # share of `/` requests answered with 500
    served: int = 0
    connections: int = 0
    # Connection counting: the transport object is the identity of a TCP connection (one per
    # accepted socket, shared by every keep-alive request on it). id() is not usable, since a
    # closed connection's transport may be freed and its id reused; weak keys let closed
    # transports drop out while `connections` only ever grows. A connection is counted on its
    # first request, so an accepted socket that never sends a request is not counted.
    seen: weakref.WeakKeyDictionary[object, bool] = field(default_factory=weakref.WeakKeyDictionary)


STATE = web.AppKey("state", AppState)


def _int_arg(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be in {low}..{high}\n")
    return value


def _has_body(request: web.Request, status: int = 200) -> bool:
    return request.method != "HEAD" and status not in BODYLESS


@web.middleware
async def _count_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    transport = request.transport
    if transport is not None and transport not in state.seen:
        state.seen[transport] = True
        state.connections += 1
    return await handler(request)


async def _mark(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-App"] = request.app[STATE].name


async def index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.served += 1
    # Evenly spread: request n fails when the running count of failures due steps up.
    if (
        state.fail_percent
        and state.served * state.fail_percent // 100 != (state.served - 1) * state.fail_percent // 100
    ):
        return web.Response(status=500, text=f"{state.body} failed\n")
    return web.Response(text=f"{state.body}\n")


async def set_errors(request: web.Request) -> web.Response:
    """`?percent=N`: `/` answers 500 to N % of requests from now on (0 heals the app)."""
    state = request.app[STATE]
    state.fail_percent = _int_arg(request, "percent", 100, 0, 100)
    return web.json_response({"app": state.name, "fail_percent": state.fail_percent})


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.healthy:
        return web.json_response({"status": "down", "app": state.name}, status=503)
    return web.json_response({"status": "ok", "app": state.name})


async def set_health(request: web.Request) -> web.Response:
    """`?ok=1` marks the app healthy, `?ok=0` down; without `ok` the state is toggled."""
    state = request.app[STATE]
    state.healthy = bool(_int_arg(request, "ok", int(not state.healthy), 0, 1))
    return web.json_response({"app": state.name, "healthy": state.healthy})


async def connections(request: web.Request) -> web.Response:
    return web.json_response({"connections": request.app[STATE].connections})


async def slow(request: web.Request) -> web.Response:
    ms = _int_arg(request, "ms", 1000, 0, 600_000)
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"{request.app[STATE].body} slow {ms}\n")


async def stream(request: web.Request) -> web.StreamResponse:
    """`chunks` writes of `size` bytes; chunk i is filled with the letter "a" + i % 26.

    Chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0 ones (aiohttp picks).
    """
    chunks = _int_arg(request, "chunks", 5, 0, 100_000)
    size = _int_arg(request, "size", 16, 1, 1 << 20)
    delay = _int_arg(request, "delay_ms", 0, 0, 60_000)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for i in range(chunks if _has_body(request) else 0):
        if i and delay:
            await asyncio.sleep(delay / 1000)
        await resp.write(bytes([0x61 + i % 26]) * size)
    await resp.write_eof()
    return resp


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _send_interim(request: web.Request, code: int) -> None:
    """Write a 1xx interim head straight to the socket, as aiohttp does for 100-continue."""
    if request.version < (1, 1):
        return  # HTTP/1.0 clients do not understand 1xx (RFC 9110 section 15.2)
    try:
        reason = http.HTTPStatus(code).phrase
    except ValueError:
        reason = "Informational"
    await request.writer.write(f"HTTP/1.1 {code} {reason}\r\n\r\n".encode("ascii"))
    request.writer.output_size = 0


async def status(request: web.Request) -> web.Response:
    """Answer with status `code`. A 1xx can only be interim: it is sent, then a 200 follows."""
    try:
        code = int(request.match_info["code"])
    except ValueError:
        raise web.HTTPBadRequest(text="status must be an integer\n") from None
    if not 100 <= code <= 599 or code == 101:
        raise web.HTTPBadRequest(text="status must be in 100..599 (101 only via /ws)\n")
    text = f"{request.app[STATE].body} status {code}\n"
    if code < 200:
        await _send_interim(request, code)
        return web.Response(text=text)
    if code in BODYLESS:
        return web.Response(status=code)
    return web.Response(status=code, text=text)


async def _digest_body(request: web.Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


async def echo(request: web.Request) -> web.Response:
    length, sha = await _digest_body(request)
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
    return web.json_response(
        {
            "app": request.app[STATE].name,
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": headers,
            "body_len": length,
            "body_sha256": sha,
        }
    )


async def sink(request: web.Request) -> web.Response:
    length, sha = await _digest_body(request)
    return web.json_response({"body_len": length, "body_sha256": sha})


async def download(request: web.Request) -> web.StreamResponse:
    """`bytes` bytes of PATTERN repeated, with Content-Length, written 64 KiB at a time."""
    total = _int_arg(request, "bytes", 1024, 0, 1 << 40)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = total
    await resp.prepare(request)
    left = total if _has_body(request) else 0
    view = memoryview(PATTERN)
    while left:
        part = view[: min(left, len(view))]
        await resp.write(part)
        left -= len(part)
    await resp.write_eof()
    return resp


def make_app(name: str, body: str) -> web.Application:
    """The sample app for one slot, e.g. `make_app("blue", "v1")`."""
    app = web.Application(middlewares=[_count_connection])
    app[STATE] = AppState(name, body)
    app.on_response_prepare.append(_mark)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_post("/admin/health", set_health)
    app.router.add_post("/admin/errors", set_errors)
    app.router.add_get("/admin/connections", connections)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws_echo)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "/sink", sink)
    app.router.add_get("/download", download)
    return app


async def start_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def run_demo_apps(blue_port: int = 5001, green_port: int = 5002) -> list[web.AppRunner]:
    """Start blue ("v1") and green ("v2"); the caller cleans the runners up."""
    runners: list[web.AppRunner] = []
    try:
        for name, body, port in (("blue", "v1", blue_port), ("green", "v2", green_port)):
            runner, _ = await start_app(make_app(name, body), port=port)
            runners.append(runner)
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners
