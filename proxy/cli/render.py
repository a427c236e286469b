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

HISTORY_COLUMNS = ("time", "actor", "action", "from", "to", "reason", "generation", "outcome")


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
    return line + (f", next step in {seconds(float(nxt))} on a passing verdict" if nxt is not None else "")


def analysis_line(an: Json | None) -> str:
    """The judge's state: judging, passed, failed, inconclusive (with what follows) or not watching."""
    if not an or not an.get("state"):
        return "not watching"
    state = str(an["state"])
    if state == "not_watching":
        return "not watching" + (f" ({an['note']})" if an.get("note") else "")
    line = state + (f" slot {an['slot']}" if an.get("slot") else "")
    if an.get("since"):
        line += f" since {when(an['since'])}"
    if state == "inconclusive":
        line += f", then {an.get('on_inconclusive') or 'hold'}"
    if state == "judging" and an.get("outcome"):
        line += f" ({an['outcome']} so far)"
    if an.get("watch_until"):
        line += f", bake until {when(an['watch_until'])}"
    if an.get("reasons"):
        line += ": " + "; ".join(map(str, an["reasons"]))
    return line


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


def up_cell(healthy: object) -> str:
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
        ("ramp", ramp_line(st.get("ramp"))),
        ("analysis", analysis_line(st.get("analysis"))),
        ("last change", change_line(st.get("last_change"))),
        *tls_lines(st.get("tls")),
    ]
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
                    drain_cell(slot.get("drain")) if first else "",
                    text(up.get("url")),
                    up_cell(up.get("healthy")),
                ]
            )
    return "\n".join([*lines, "", table(["SLOT", "WEIGHT", "IN-FLIGHT", "DRAIN", "UPSTREAM", "HEALTH"], rows)])


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
            rows.append([name, text(up.get("url")), up_cell(up.get("healthy")), when(up.get("checked_at")), checks])
    return table(["SLOT", "UPSTREAM", "HEALTH", "CHECKED", "CHECKS"], rows)


def history_entries(body: object) -> list[Json]:
    """The entry list of a /v1/history answer: a bare list, or the first list in an object."""
    if isinstance(body, dict):
        for key in ("entries", "history", "items"):
            if isinstance(body.get(key), list):
                return [e for e in body[key] if isinstance(e, dict)]
        body = next((v for v in body.values() if isinstance(v, list)), [])
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


def history_cell(key: str, value: object) -> str:
    """A routing state `{active, weights}` as its slot (or its split during a ramp); times as dates."""
    if key in ("time", "at"):
        return when(value)
    if isinstance(value, dict) and "active" in value:
        split = [f"{slot} {w}%" for slot, w in (value.get("weights") or {}).items() if w]
        return ", ".join(split) if len(split) > 1 else text(value["active"])
    return text(value)


def render_history(entries: list[Json]) -> str:
    if not entries:
        return "no changes recorded"
    keys = {k for e in entries for k in e}
    columns = [c for c in HISTORY_COLUMNS if c in keys] + sorted(keys - set(HISTORY_COLUMNS))
    rows = [[history_cell(c, e.get(c)) for c in columns] for e in entries]
    return table([c.upper() for c in columns], rows)


def summary(verb: str, res: Json, slot: str | None = None) -> str:
    """One line saying what a mutation did, from its response (`changed`, `from` + status)."""
    gen = f"(generation {res.get('generation')})"
    active, ramp = res.get("active"), res.get("ramp")
    if not res.get("changed", True):
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
