"""The live web console on the admin listener: GET /ui, its static files, and GET /v1/events.

- The page (static/: index.html, console.css, console.js; no build step, no CDN, nothing loaded
  from elsewhere) is public, as /openapi.json is: it holds no data. Everything it shows comes from
  the token-protected API: GET /v1/whoami (the caller's name and role), GET /v1/events (the live
  state as server-sent events) and GET /v1/history; its buttons POST to the same endpoints as the
  CLI, with `If-Match: <the generation the view shows>`.
- The token is pasted once and kept in the tab's sessionStorage, sent as a bearer header with
  fetch() (the stream too: EventSource cannot send headers). Never in a URL or a cookie.
- Every console response carries a strict Content-Security-Policy (no inline script or style,
  nothing from another origin, no framing) and `X-Content-Type-Options: nosniff`.
- One broadcaster (stream.py) samples the state about once a second (frame.py) and fans the same
  encoded frame out to every open stream; it runs only while a stream is open, and a slow reader's
  queue is capped. Nothing here touches the data path: it reads the counters /metrics reads.
"""

from admin.console.routes import add_console_routes

__all__ = ["add_console_routes"]
