"""The admin API's command-line client: `slotswitch status|switch|rollback|ramp|...`.

A thin synchronous client on urllib (no event loop, quick to start). Every command takes
`--admin URL` (env SLOTSWITCH_ADMIN_URL), `--token` (env SLOTSWITCH_ADMIN_TOKEN; sent only as a
bearer header, never printed, never re-sent on a redirect) and `--json` (one JSON object with
"schema_version": 1 on stdout; `status --watch --json` prints NDJSON, one object per change).
Environment HTTP proxies are ignored: the admin API lives on loopback or a private network.
Errors go to stderr as `error: <code>: <message>`; exit codes are in EXIT_CODES.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from proxy.cli import history as history_table
from proxy.cli import render
from proxy.cli.wait import Outcome, wait_for_drain, wait_for_verdict
from proxy.settings.types import parse_duration

Json = dict[str, Any]

SCHEMA_VERSION = 1
OK, FAILED, USAGE, TIMED_OUT, CONFLICT, UNREACHABLE = 0, 1, 2, 3, 4, 5
DEFAULT_ADMIN = "http://127.0.0.1:9901"
REQUEST_TIMEOUT = 10.0

EXIT_CODES = """\b
Exit codes:
  0  ok
  1  failed: any other API error (4xx/5xx), or (--wait) the judge rolled back or gave no verdict
  2  usage error
  3  timed out waiting (--wait / --timeout)
  4  conflict: refused (409, e.g. a failing health gate) or stale --if-match (412)
  5  admin API unreachable, or authentication failed (401/403)
"""


class CliError(Exception):
    def __init__(self, code: str, message: str, exit_code: int = FAILED, error: Json | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.exit_code = code, message, exit_code
        self.error = error or {"code": code, "message": message}


class Duration(click.ParamType[float, Any]):
    """`250ms`, `30s`, `2m`, `1h` or bare seconds -> float seconds."""

    name = "duration"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail("must be more than 0", param, ctx)
        return seconds


def _admin_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"expected an http(s) URL like {DEFAULT_ADMIN}, got {value!r}")
    return value.rstrip("/")


class Client:
    """JSON over HTTP to the admin API; every failure becomes a CliError with its exit code."""

    def __init__(self, base: str, token: str | None, timeout: float = REQUEST_TIMEOUT) -> None:
        self.base, self.token, self.timeout = base, token, timeout
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Json | None = None, if_match: int | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", "slotswitch-cli")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if if_match is not None:
            req.add_header("If-Match", str(if_match))
        if self.token:
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except OSError:
                raw = b""
            finally:
                exc.close()
            raise _http_error(exc.code, exc.reason, raw) from None
        except urllib.error.URLError as exc:
            raise CliError("unreachable", f"cannot reach {self.base}: {exc.reason}", UNREACHABLE) from None
        except OSError as exc:  # timeouts, resets after connecting
            raise CliError("unreachable", f"{self.base}: {exc or type(exc).__name__}", UNREACHABLE) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError("bad_response", f"{method} {path}: the answer is not JSON") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def status(self) -> Json:
        body = self.get("/v1/status")
        if not isinstance(body, dict):
            raise CliError("bad_response", "GET /v1/status: expected a JSON object")
        return body


def _http_error(status: int, reason: object, raw: bytes) -> CliError:
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        error, code, message = None, f"http_{status}", str(reason or "HTTP error")
    exit_code = UNREACHABLE if status in (401, 403) else CONFLICT if status in (409, 412) else FAILED
    return CliError(code, message, exit_code, error if isinstance(error, dict) else None)


@dataclass
class Out:
    client: Client
    as_json: bool
    extra: Json = field(default_factory=dict)

    def result(self, payload: object, human: Callable[[], str]) -> None:
        """Print the command's answer: one JSON object, or its human rendering."""
        if self.as_json:
            obj = payload if isinstance(payload, dict) else {"entries": payload}
            click.echo(json.dumps({"schema_version": SCHEMA_VERSION, **obj, **self.extra}))
        else:
            click.echo(human())

    def fail(self, exc: CliError) -> NoReturn:
        if self.as_json:
            click.echo(json.dumps({"schema_version": SCHEMA_VERSION, "error": exc.error}))
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        for reason in exc.error.get("reasons") or []:
            click.echo(f"  - {reason}", err=True)
        sys.exit(exc.exit_code)


COMMANDS: list[click.Command] = []


def command(name: str, *, mutation: bool = False) -> Callable[[Callable[..., None]], click.Command]:
    """A CLI command `fn(out, **options)` with the shared options; mutations also get --reason, --if-match."""

    def decorate(fn: Callable[..., None]) -> click.Command:
        @functools.wraps(fn)
        def run(admin: str, token: str | None, as_json: bool, **kwargs: Any) -> None:
            out = Out(Client(admin, token), as_json)
            try:
                fn(out, **kwargs)
            except CliError as exc:
                out.fail(exc)

        cmd = click.command(name, epilog=EXIT_CODES)(run)
        if mutation:
            cmd.params += [
                click.Option(["--reason"], help="Why (recorded with the change and in the history)."),
                click.Option(
                    ["--if-match", "if_match"],
                    type=click.IntRange(min=0),
                    metavar="GEN",
                    help="Apply only if the generation is still GEN (else exit 4).",
                ),
            ]
        cmd.params += [
            click.Option(
                ["--admin"],
                envvar="SLOTSWITCH_ADMIN_URL",
                default=DEFAULT_ADMIN,
                show_default=True,
                show_envvar=True,
                callback=_admin_url,
                metavar="URL",
                help="Admin API base URL.",
            ),
            click.Option(["--token"], envvar="SLOTSWITCH_ADMIN_TOKEN", show_envvar=True, help="Bearer token."),
            click.Option(["--json", "as_json"], is_flag=True, help="Machine output (schema_version 1)."),
        ]
        COMMANDS.append(cmd)
        return cmd

    return decorate


def _post(out: Out, path: str, body: Json, reason: str | None, if_match: int | None) -> Json:
    if reason is not None:
        body["reason"] = reason
    res = out.client.request("POST", path, body, if_match=if_match)
    if not isinstance(res, dict):
        raise CliError("bad_response", f"POST {path}: expected a JSON object")
    return res


# -- status ---------------------------------------------------------------------------------


def fingerprint(st: Json) -> object:
    """What makes `status --watch --json` print a new line: the routing state, upstream health, drains,
    the judge's state and the ramp's hold (the human view redraws every --interval)."""
    slots = st.get("slots") or {}
    health = {n: [u.get("state", u.get("healthy")) for u in s.get("upstreams") or []] for n, s in slots.items()}
    drains = {n: (s.get("drain") or {}).get("state") for n, s in slots.items()}
    judge = (st.get("analysis") or {}).get("judge") or {}
    held = (st.get("ramp") or {}).get("held")
    verdict = (judge.get("state"), judge.get("slot"), judge.get("reasons"))
    return (st.get("generation"), st.get("phase"), st.get("weights"), health, drains, verdict, held)


@command("status")
@click.option("--watch", "-w", is_flag=True, help="Redraw every --interval (--json: a line per change), until Ctrl-C.")
@click.option("--interval", type=Duration(positive=True), default="1s", show_default=True, help="Poll interval.")
@click.option("--max-updates", type=click.IntRange(min=1), hidden=True)
def status(out: Out, watch: bool, interval: float, max_updates: int | None) -> None:
    """Active slot, phase, weights, per-slot upstreams, drain, ramp, analysis and the last change."""
    if not watch:
        st = out.client.status()
        out.result(st, lambda: render.render_status(st))
        return
    last: object = None
    shown = 0
    try:
        while True:
            st = out.client.status()
            if (fp := fingerprint(st)) != last or not out.as_json:
                last, shown = fp, shown + 1
                if out.as_json:
                    out.result(st, str)
                else:
                    if sys.stdout.isatty():
                        click.clear()
                    elif shown > 1:
                        click.echo()
                    click.echo(render.render_status(st))
                if max_updates is not None and shown >= max_updates:
                    return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@command("health")
def health(out: Out) -> None:
    """Per-upstream health: the result of the latest active checks of every slot."""
    st = out.client.status()
    out.result(st, lambda: render.render_health(st))


@command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest N entries.")
def history(out: Out, limit: int) -> None:
    """The change log, one line per change: who, when, what, why and the key numbers (--json: in full)."""
    body = out.client.get(f"/v1/history?limit={limit}")
    out.result(body, lambda: history_table.render_history(history_table.history_entries(body)))


# -- switching ------------------------------------------------------------------------------


@command("switch", mutation=True)
@click.argument("slot")
@click.option("--drain-timeout", type=Duration(), help="Cut off the old slot's requests after this [proxy default].")
@click.option(
    "--wait", is_flag=True, help="Wait for the outcome: the old slot drained and the bake passed (else exit 1 or 3)."
)
@click.option("--timeout", type=Duration(), default="2m", show_default=True, help="Give up waiting after this.")
@click.option("--force", is_flag=True, help="Switch even if the health gate refuses, or to a slot marked failed.")
def switch(
    out: Out,
    slot: str,
    drain_timeout: float | None,
    wait: bool,
    timeout: float,
    force: bool,
    reason: str | None,
    if_match: int | None,
) -> None:
    """Send all new traffic to SLOT; the old slot drains. Idempotent: no change if SLOT is active."""
    body: Json = {"slot": slot}
    if drain_timeout is not None:
        body["drain_timeout"] = drain_timeout
    if force:
        body["force"] = True
    res = _post(out, "/v1/switch", body, reason, if_match)
    lines = [render.summary("switch", res)]
    if wait:
        started = time.monotonic()
        try:
            drains = wait_for_drain(out.client, res, timeout) if res.get("changed") else {}
        except Outcome as exc:
            raise CliError(exc.kind, exc.message, exc.code) from None
        out.extra["drain"] = drains
        lines += [f"{n}: {render.drain_cell(d)}" for n, d in drains.items()]
        left = max(0.0, timeout - (time.monotonic() - started))
        lines.append(_verdict(out, slot, int(res.get("generation") or 0), left))
    out.result(res, lambda: "\n".join(lines))


def _verdict(out: Out, slot: str, generation: int, timeout: float) -> str:
    """Wait for the judge's outcome on `slot` (proxy/cli/wait.py); a line for a pass, else CliError."""
    try:
        judge = wait_for_verdict(out.client, slot, generation, timeout)
    except Outcome as exc:
        error = {"code": exc.kind, "message": exc.message, "judge": exc.judge}
        raise CliError(exc.kind, exc.message, exc.code, error) from None
    out.extra["judge"] = judge
    if judge.get("state") == "not_watching":
        return f"{slot}: no bake (analysis.watch_after_switch is 0)"
    return f"{slot}: passed analysis ({render.evidence_line({'judge': judge})})"


def _simple(verb: str, path: str, doc: str) -> click.Command:
    def run(out: Out, reason: str | None, if_match: int | None) -> None:
        res = _post(out, path, {}, reason, if_match)
        out.result(res, lambda: render.summary(verb, res))

    run.__doc__ = doc
    return command(verb, mutation=True)(run)


rollback = _simple("rollback", "/v1/rollback", "All new traffic back to the previous slot at once (ends a ramp).")
abort = _simple("abort", "/v1/abort", "Abort a ramp or switch: traffic back to the stable slot (same as rollback).")
pause = _simple("pause", "/v1/pause", "Freeze the ramp at its current step.")
resume = _simple("resume", "/v1/resume", "Continue a paused ramp.")
promote = _simple("promote", "/v1/promote", "Advance the ramp one step now; from the last step, complete the switch.")


def _steps(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        steps = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated percentages like 5,25,50,100, got {value!r}") from None
    if not steps:
        raise click.BadParameter("at least one step is needed")
    return steps


@command("ramp", mutation=True)
@click.argument("slot")
@click.option("--steps", default="5,25,50,100", show_default=True, callback=_steps, help="Percent steps.")
@click.option("--interval", type=Duration(positive=True), default="30s", show_default=True, help="Time per step.")
@click.option("--force", is_flag=True, help="Start even if the health gate refuses, or to a slot marked failed.")
@click.option("--wait", is_flag=True, help="Wait until the ramp and its bake pass (exit 0), or roll back (exit 1).")
@click.option("--timeout", type=Duration(), default="30m", show_default=True, help="Give up waiting after this.")
def ramp(
    out: Out,
    slot: str,
    steps: list[int],
    interval: float,
    force: bool,
    wait: bool,
    timeout: float,
    reason: str | None,
    if_match: int | None,
) -> None:
    """Shift traffic to SLOT in steps; each step advances after --interval on a passing analysis verdict."""
    body: Json = {"slot": slot, "steps": steps, "interval": interval}
    if force:
        body["force"] = True
    res = _post(out, "/v1/ramp", body, reason, if_match)
    lines = [render.summary("ramp", res)]
    if wait:
        lines.append(_verdict(out, slot, int(res.get("generation") or 0), timeout))
    out.result(res, lambda: "\n".join(lines))


@command("set-upstreams", mutation=True)
@click.argument("slot")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
def set_upstreams(out: Out, slot: str, urls: tuple[str, ...], reason: str | None, if_match: int | None) -> None:
    """Point the idle SLOT at new upstream URLs (refused, exit 4, while SLOT takes traffic)."""
    body: Json = {"upstreams": list(urls)}
    if reason is not None:
        body["reason"] = reason
    res = out.client.request("PUT", f"/v1/slots/{urllib.parse.quote(slot, safe='')}", body, if_match=if_match)
    out.result(res, lambda: render.summary("set-upstreams", res, slot))


def register(group: click.Group) -> None:
    """Add the admin commands to the `slotswitch` group, and the exit codes to its help."""
    for cmd in COMMANDS:
        group.add_command(cmd)
    group.epilog = f"{group.epilog}\n\n{EXIT_CODES}" if group.epilog else EXIT_CODES
