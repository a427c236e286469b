"""Human renderings for the admin CLI: the status table, health, history, and one-line summaries.

Everything here takes the admin API's JSON (see admin/views.py) and returns text; missing keys
render as "-" so an older or newer proxy never breaks the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def when(epoch: object, now: float | None = None) -> str:
    """`2024-05-01 12:00:01 (12s ago)` for an epoch timestamp; other values as they are."""
    if isinstance(epoch, bool) or not isinstance(epoch, int | float):
        return text(epoch)
    ago = (time.time() if now is None else now) - epoch
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return f"{stamp} ({seconds(ago)} ago)" if ago >= 0 else stamp


def seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    if value < 3600:
        return f"{value // 60:.0f}m{value % 60:02.0f}s"
    return f"{value // 3600:.0f}h{value % 3600 // 60:02.0f}m"


def text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def weights(st: Json) -> str:
    return ", ".join(f"{slot} {w}%" for slot, w in (st.get("weights") or {}).items()) or "-"


def ramp_line(ramp: Json | None) -> str:
    if not ramp:
        return "-"
    steps = ramp.get("steps") or []
    step = int(ramp.get("step", 0))
    line = f"to {ramp.get('slot')}: step {step + 1}/{len(steps)} at {ramp.get('percent')}% (steps {text(steps)})"
    if ramp.get("paused"):
        return line + ", paused"
    nxt = ramp.get("next_step_in_s")
    if nxt is not None:
        return line + f", next step in {seconds(float(nxt))} on a passing verdict"
    return line + (f", {ramp['held']}" if ramp.get("held") else "")


JUDGE_WORDS = {
    "judging": "judging",
    "inconclusive": "inconclusive",
    "passed": "passed",
    "failed": "FAILED and rolled back",
    "not_watching": "not watching",
}


def analysis_line(an: Json | None, now: float | None = None) -> str:
    """One clear state for the judge (the judge state contract in docs/admin-api.md)."""
    judge = (an or {}).get("judge")
    if not isinstance(judge, dict):
        return "not watching"
    state = str(judge.get("state"))
    line = JUDGE_WORDS.get(state, state)
    if judge.get("slot"):
        line += f" {judge['slot']}"
    if judge.get("since") and state != "not_watching":
        line += f" since {when(judge.get('since'), now)}"
    if state == "inconclusive":
        line += f", then {judge.get('on_inconclusive', 'hold')}"
    until = judge.get("watch_until")
    if isinstance(until, int | float) and judge.get("watching"):
        left = until - (time.time() if now is None else now)
        line += f"; watching {judge['watching']} for {seconds(max(0.0, left))} more"
    if state == "not_watching":
        line += ": no ramp, and no switch within the bake time"
    return line


def evidence_line(an: Json | None) -> str:
    """The judge's reasons and numbers so far."""
    judge = (an or {}).get("judge") or {}
    parts = [str(r) for r in judge.get("reasons") or []]
    numbers = judge.get("numbers") or {}
    shown = [f"{k}={number(v)}" for k, v in numbers.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    if shown:
        parts.append(", ".join(shown[:8]))
    if (an or {}).get("failures_in_a_row"):
        parts.append(f"{an['failures_in_a_row']} failing verdict(s) in a row")  # type: ignore[index]
    return "; ".join(parts) or "-"


def number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def split_line(split: Json | None) -> str:
    if not split:
        return "-"
    configured = split.get("configured") or {}
    observed = split.get("observed") or {}
    cells = [f"{slot} {observed.get(slot, 0):g}% (configured {w}%)" for slot, w in configured.items()]
    total = sum((split.get("requests") or {}).values())
    return (", ".join(cells) or "-") + f" over {total} requests since {when(split.get('since'))}"


def change_line(ch: Json | None) -> str:
    if not ch:
        return "-"
    line = f"{text(ch.get('action'))} by {text(ch.get('by'))}"
    if ch.get("trigger") and ch.get("trigger") != ch.get("by"):
        line += f" via {ch['trigger']}"
    line += f", {when(ch.get('at'))}"
    return line + (f': "{ch["reason"]}"' if ch.get("reason") else "")


def drain_cell(drain: Json | None) -> str:
    drain = drain or {}
    state = text(drain.get("state"))
    if state == "cut_off" and drain.get("cut"):
        return f"cut_off ({drain['cut']} cut)"
    if state in ("drained", "cut_off") and drain.get("duration_s") is not None:
        return f"{state} in {seconds(float(drain['duration_s']))}"
    if state == "draining" and drain.get("timeout_s") is not None:
        return f"draining (timeout {seconds(float(drain['timeout_s']))})"
    return state


def up_cell(healthy: object, state: object = None) -> str:
    if isinstance(state, str):
        return "up" if state == "up" else state if state == "pending" else state.upper()
    return "up" if healthy is True else "DOWN" if healthy is False else "?"


def tls_lines(tls: object) -> list[tuple[str, str]]:
    """One line per listener certificate: its name and how long until it expires."""
    if not isinstance(tls, dict):
        return []
    lines = []
    for cert in tls.get("certificates") or []:
        if not isinstance(cert, dict):
            continue
        left = cert.get("expires_in_s")
        days = f"{left / 86400:.0f} days" if isinstance(left, int | float) else "?"
        warn = "  EXPIRES SOON" if isinstance(left, int | float) and left < 14 * 86400 else ""
        name, until = text(cert.get("name")), text(cert.get("not_after"))
        lines.append(("certificate", f"{name} expires {until} (in {days}){warn}"))
    return lines


def render_status(st: Json) -> str:
    head = [
        ("active", f"{text(st.get('active'))} (previous {text(st.get('previous'))})"),
        ("phase", text(st.get("phase"))),
        ("generation", text(st.get("generation"))),
        ("weights", weights(st)),
        ("traffic got", split_line(st.get("split"))),
        ("ramp", ramp_line(st.get("ramp"))),
        ("judge", analysis_line(st.get("analysis"))),
        ("evidence", evidence_line(st.get("analysis"))),
        ("last change", change_line(st.get("last_change"))),
        *tls_lines(st.get("tls")),
    ]
    warning = (st.get("split") or {}).get("warning")
    if warning:
        head.append(("WARNING", str(warning)))
    for slot, why in (st.get("failed") or {}).items():
        head.append(("failed", f"{slot}: {why} (redeploy it with set-upstreams, or force a switch)"))
    width = max(len(k) for k, _ in head)
    lines = [f"{k.ljust(width)}  {v}" for k, v in head]
    rows: list[list[str]] = []
    for name, slot in (st.get("slots") or {}).items():
        ups = slot.get("upstreams") or [{}]
        for i, up in enumerate(ups):
            first = i == 0
            rows.append(
                [
                    name if first else "",
                    f"{slot.get('weight', '-')}%" if first else "",
                    text(slot.get("in_flight")) if first else "",
                    text(slot.get("requests")) if first else "",
                    text(slot.get("upstream_5xx")) if first else "",
                    text(slot.get("upstream_4xx")) if first else "",
                    drain_cell(slot.get("drain")) if first else "",
                    text(up.get("url")),
                    up_cell(up.get("healthy"), up.get("state")),
                ]
            )
    columns = ["SLOT", "WEIGHT", "IN-FLIGHT", "REQUESTS", "5XX", "4XX", "DRAIN", "UPSTREAM", "HEALTH"]
    return "\n".join([*lines, "", table(columns, rows)])


def check_cell(check: Json) -> str:
    cell = f"{check.get('check', '?')} {'ok' if check.get('ok') else 'FAIL'}"
    if check.get("status") is not None and not check.get("error"):
        cell += f" {check['status']}"
    if check.get("ms") is not None:
        cell += f" {check['ms']}ms"
    if check.get("error"):
        cell += f" ({check['error']})"
    return cell


def render_health(st: Json) -> str:
    rows = []
    for name, slot in (st.get("slots") or {}).items():
        for up in slot.get("upstreams") or []:
            checks = "; ".join(check_cell(c) for c in up.get("checks") or []) or "not checked yet"
            rows.append(
                [
                    name,
                    text(up.get("url")),
                    up_cell(up.get("healthy"), up.get("state")),
                    when(up.get("checked_at")),
                    checks,
                ]
            )
    return table(["SLOT", "UPSTREAM", "HEALTH", "CHECKED", "CHECKS"], rows)


def summary(verb: str, res: Json, slot: str | None = None) -> str:
    """One line saying what a mutation did, from its response (`changed`, `from` + status)."""
    gen = f"(generation {res.get('generation')})"
    active, ramp = res.get("active"), res.get("ramp")
    if not res.get("changed", True):
        if res.get("message"):
            return f"{res['message']}: nothing changed, active {active} {gen}"
        return f"nothing to change: active {active}, phase {res.get('phase')} {gen}"
    if verb in ("ramp", "promote", "pause", "resume") and ramp:
        where = f"{ramp.get('percent')}% (step {int(ramp.get('step', 0)) + 1}/{len(ramp.get('steps') or [])})"
        return f"ramp to {ramp.get('slot')} {'paused at' if ramp.get('paused') else 'now at'} {where} {gen}"
    if verb in ("rollback", "abort"):
        if res.get("from") == active:
            return f"ramp aborted: all traffic back on {active} {gen}"
        return f"rolled back {res.get('from')} -> {active}, weights {weights(res)} {gen}"
    if verb == "set-upstreams" and slot:
        urls = [text(u.get("url")) for u in (res.get("slots") or {}).get(slot, {}).get("upstreams") or []]
        return f"slot {slot} now points at {', '.join(urls) or '-'} {gen}"
    return f"switched {res.get('from')} -> {active}, weights {weights(res)} {gen}"
