"""`slotswitch history`: the audit entries as a compact table (one line each), or --json in full.

Columns: time, actor, action, change (from -> to; for a deploy the slot and its URLs; for a
refusal its status), reason (a refusal's error message; cut to REASON_WIDTH), and the key numbers
of the change's details. Entries come from GET /v1/history (proxy/release/audit.py).
"""

from __future__ import annotations

from typing import Any

from proxy.cli.render import table, text, when

Json = dict[str, Any]

REASON_WIDTH = 60
NUMBERS_WIDTH = 60
# Details keys worth a column, in this order (the judge's numbers, a ramp's steps, a reload's diff).
KEY_NUMBERS = ("rule", "requests", "error_rate", "p99_s", "steps", "interval_s", "changed", "alertname", "force")


def _details(entry: Json) -> Json:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def history_entries(body: object) -> list[Json]:
    """The entry list of a /v1/history answer: a bare list, or the first list in an object."""
    if isinstance(body, dict):
        for key in ("entries", "history", "items"):
            if isinstance(body.get(key), list):
                return [e for e in body[key] if isinstance(e, dict)]
        body = next((v for v in body.values() if isinstance(v, list)), [])
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


def routing_cell(value: object) -> str:
    """A routing state `{active, weights}` as its slot, or its split during a ramp."""
    if isinstance(value, dict) and "active" in value:
        split = [f"{slot} {w}%" for slot, w in (value.get("weights") or {}).items() if w]
        return ", ".join(split) if len(split) > 1 else text(value["active"])
    return text(value)


def time_cell(value: object) -> str:
    """RFC 3339 `2026-01-02T03:04:05.000Z` as `2026-01-02 03:04:05Z`; other values as they are."""
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return value[:10] + " " + value[11:19] + ("Z" if value.endswith("Z") else "")
    return when(value)


def change_cell(entry: Json) -> str:
    details = _details(entry)
    if entry.get("outcome") == "refused":
        return f"refused ({text(entry.get('status'))})"
    if entry.get("action") == "deploy" and details.get("slot"):
        urls = details.get("to") or []
        return f"{details['slot']} -> {', '.join(map(str, urls)) if isinstance(urls, list) else text(urls)}"
    before, after = routing_cell(entry.get("from")), routing_cell(entry.get("to"))
    return before if before == after else f"{before} -> {after}"


def reason_cell(entry: Json) -> str:
    reason = entry.get("reason") or ""
    error = entry.get("error")
    if not reason and isinstance(error, dict):
        reason = f"{error.get('code')}: {error.get('message')}"
    details = _details(entry)
    reasons = details.get("reasons")
    if not reason and isinstance(reasons, list) and reasons:
        reason = "; ".join(map(str, reasons))
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 3] + "..."


def numbers_cell(entry: Json) -> str:
    details = _details(entry)
    cells = []
    for key in KEY_NUMBERS:
        value = details.get(key)
        if value is None or value == [] or value is False:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        cells.append(f"{key}={value}")
    line = " ".join(cells)
    return line if len(line) <= NUMBERS_WIDTH else line[: NUMBERS_WIDTH - 3] + "..."


def render_history(entries: list[Json]) -> str:
    if not entries:
        return "no changes recorded"
    rows = [
        [
            time_cell(e.get("time")),
            text(e.get("actor")),
            text(e.get("action")),
            change_cell(e),
            reason_cell(e) or "-",
            numbers_cell(e) or "-",
        ]
        for e in entries
    ]
    return table(["TIME", "ACTOR", "ACTION", "CHANGE", "REASON", "NUMBERS"], rows)
