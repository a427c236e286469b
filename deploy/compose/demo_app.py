#!/usr/bin/env python3
"""A sample upstream for the compose demo: the app `slotswitch demo` runs (proxy.process.demo_apps), for one slot.

    python demo_app.py --name blue --body v1 --port 5001

It answers `<body>` on `/` with `X-App: <name>`, `{"status": "ok"}` on `/health`, and the other routes
of proxy.process.demo_apps. For trying the automatic rollback, it can be told to fail on purpose:

    curl -X POST 'http://127.0.0.1:5002/admin/errors?percent=50'   # half of the requests answer 500
    curl -X POST 'http://127.0.0.1:5002/admin/errors?percent=0'    # healthy again

`/health` and `/admin/*` never fail that way: a bug that the health checks do not see, as in real life.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field

from aiohttp import web

from proxy.process.demo_apps import Handler, make_app


@dataclass
class Faults:
    percent: int = 0  # share of requests answered 500, per 100
    seen: itertools.count[int] = field(default_factory=itertools.count)


FAULTS = web.AppKey("faults", Faults)


def _fails(n: int, percent: int) -> bool:
    """Whether request number n fails: `percent` of every 100, spread evenly (not in one block)."""
    return (n + 1) * percent // 100 != n * percent // 100


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 500 for `percent` of every 100 requests (evenly spread, not random)."""
    faults = request.app[FAULTS]
    if (
        faults.percent
        and not request.path.startswith(("/health", "/admin/"))
        and _fails(next(faults.seen), faults.percent)
    ):
        return web.Response(status=500, text="injected error\n")
    return await handler(request)


async def set_errors(request: web.Request) -> web.Response:
    try:
        percent = int(request.query.get("percent", ""))
    except ValueError:
        raise web.HTTPBadRequest(text="percent must be an integer in 0..100\n") from None
    if not 0 <= percent <= 100:
        raise web.HTTPBadRequest(text="percent must be an integer in 0..100\n")
    request.app[FAULTS].percent = percent
    return web.json_response({"errors_percent": percent})


def build(name: str, body: str) -> web.Application:
    """proxy.process.demo_apps' app for one slot, plus POST /admin/errors?percent=N."""
    app = make_app(name, body)
    app.middlewares.append(_errors)
    app[FAULTS] = Faults()
    app.router.add_post("/admin/errors", set_errors)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the slotswitch sample app for one slot.")
    parser.add_argument("--name", required=True, help="slot name, sent as X-App (e.g. blue)")
    parser.add_argument("--body", required=True, help="what / answers (e.g. v1)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on [0.0.0.0]")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # run_app stops on SIGTERM/SIGINT after finishing in-flight requests.
    web.run_app(build(args.name, args.body), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
