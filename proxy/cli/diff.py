"""`slotswitch diff`: shadow traffic's comparison (GET /v1/shadow) as a table, and with --endpoint
the samples of one endpoint, the active slot's answer and the idle slot's side by side.

Everything shown came from outside the proxy (paths, headers, bodies): it is printed through
`_clean`, which escapes control characters, so a sample cannot move the terminal's cursor.
"""

from __future__ import annotations

import itertools
import textwrap
import urllib.parse
from typing import Any

import click

from proxy.cli import render
from proxy.cli.client import Json, Out, command

WIDTH = 60  # columns of one side of a sample


def _clean(value: object) -> str:
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in render.text(value))


def _rate(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1%}"


def render_table(view: Json) -> str:
    totals = view.get("totals") or {}
    lines = [
        f"comparing idle slot {_clean(view.get('slot'))} with active slot {_clean(view.get('active'))} "
        f"(shadow.percent {view.get('percent')}), since {render.when(view.get('since'))}",
        f"mirrored {totals.get('mirrored', 0)}, same {totals.get('same', 0)}, differ {totals.get('differ', 0)}, "
        f"errors {totals.get('errors', 0)}, skipped {totals.get('skipped', 0)}, dropped {totals.get('dropped', 0)}; "
        f"diff rate {_rate(totals.get('diff_rate'))}",
        "",
    ]
    rows = []
    for ep in view.get("endpoints") or []:
        top = ", ".join(f"{d['where']} ({d['count']})" for d in ep.get("top_differences") or [])
        rows.append(
            [
                _clean(f"{ep.get('method')} {ep.get('path')}")[:60],
                str(ep.get("mirrored")),
                str(ep.get("same")),
                str(ep.get("differ")),
                str(ep.get("errors")),
                str(ep.get("skipped")),
                _rate(ep.get("diff_rate")),
                _clean(top)[:80] or "-",
                _clean(", ".join(ep.get("noise") or []))[:60] or "-",
            ]
        )
    if not rows:
        return "\n".join([*lines, "no mirrored requests yet"])
    headers = ("endpoint", "mirrored", "same", "differ", "errors", "skipped", "rate", "top differences", "noise")
    return "\n".join(lines) + render.table(headers, rows)


def _side(side: Json) -> list[str]:
    if "error" in side and "status" not in side:
        return [f"slot {side.get('slot')}: error", *textwrap.wrap(_clean(side["error"]), WIDTH)]
    out = [f"slot {side.get('slot')}: {side.get('status')}"]
    out += [_clean(f"{name}: {value}")[:WIDTH] for name, value in side.get("headers") or []]
    out.append("")
    for line in _clean(side.get("body", "")).splitlines() or [""]:
        out += textwrap.wrap(line, WIDTH) or [""]
    return out


def render_samples(endpoint: str, samples: list[Json]) -> str:
    if not samples:
        return f"{_clean(endpoint)}: no samples (only differing answers and errors are kept)"
    blocks = []
    for n, sample in enumerate(samples, 1):
        req = sample.get("request") or {}
        where = _clean(", ".join(sample.get("differences") or [])) or _clean(sample.get("detail"))
        target = f"{_clean(req.get('method'))} {_clean(req.get('target'))}"
        head = [f"sample {n} of {len(samples)}: {sample.get('result')}  {target}", f"differences: {where}"]
        if sample.get("noise"):
            head.append("noise: " + _clean(", ".join(sample["noise"])))
        left, right = _side(sample.get("active") or {}), _side(sample.get("shadow") or {})
        pairs = itertools.zip_longest(left, right, fillvalue="")
        body = [f"{a:<{WIDTH}} | {b}".rstrip() for a, b in pairs]
        blocks.append("\n".join([*head, *body]))
    return "\n\n".join(blocks)


@command("diff")
@click.option("--endpoint", metavar="'METHOD /path/{id}'", help="Show this endpoint's samples side by side.")
def diff(out: Out, endpoint: str | None) -> None:
    """Shadow traffic: how the idle slot answers mirrored requests, per endpoint (see shadow: in the config)."""
    path = "/v1/shadow"
    if endpoint:
        path += "?" + urllib.parse.urlencode({"endpoint": endpoint})
    view: Any = out.client.get(path)
    if endpoint:
        out.result(view, lambda: render_samples(endpoint, view.get("samples") or []))
    else:
        out.result(view, lambda: render_table(view))
