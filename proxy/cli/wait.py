"""`switch --wait` and `ramp --wait`: wait for the release's outcome, not just for the change.

The outcome is read from the judge state contract (GET /v1/status, analysis.judge; see
docs/admin-api.md): the episode the change began (judge.generation >= the change's generation)
ends "passed" (exit 0), "failed" and rolled back (exit 1, with the judge's reasons and numbers),
or the wait runs past --timeout (exit 3). A rollback by anyone else, or a bake that ended without a
verdict (too little traffic), is exit 1 too: the release did not prove itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from proxy.cli import render

if TYPE_CHECKING:
    from proxy.cli.client import Client

Json = dict[str, Any]
POLL = 0.25


class Outcome(Exception):
    """How the wait ended: `code` is the exit code; `message` says why, with the judge's numbers."""

    def __init__(self, code: int, kind: str, message: str, judge: Json) -> None:
        super().__init__(message)
        self.code, self.kind, self.message, self.judge = code, kind, message, judge


def wait_for_drain(client: Client, res: Json, timeout: float) -> Json:
    """After a switch: poll until no slot that was draining still is; the final drain states."""
    target = res.get("active")
    slots = res.get("slots") or {}
    waiting = [n for n, s in slots.items() if (s.get("drain") or {}).get("state") == "draining"]
    deadline, pause = time.monotonic() + timeout, 0.05
    while True:
        st = client.status()
        if st.get("phase") == "rolled_back" or st.get("active") != target:
            why = render.change_line(st.get("last_change"))
            raise Outcome(1, "rolled_back", f"active is now {st.get('active')} ({why})", {})
        drains = {n: (st["slots"].get(n) or {}).get("drain") or {} for n in waiting}
        if all(d.get("state") != "draining" for d in drains.values()):
            return drains
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(n for n, d in drains.items() if d.get("state") == "draining")
            message = f"switched to {target}, but {names} still draining after {render.seconds(timeout)}"
            raise Outcome(3, "timeout", message, {})
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, 1.0)


def judge_numbers(judge: Json) -> str:
    reasons = "; ".join(map(str, judge.get("reasons") or []))
    numbers = ", ".join(
        f"{k}={render.number(v)}"
        for k, v in (judge.get("numbers") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )
    return " | ".join(p for p in (reasons, numbers) if p) or "no numbers"


def wait_for_verdict(client: Client, slot: str, generation: int, timeout: float, now: Any = time.monotonic) -> Json:
    """Poll until the release of `slot` begun at `generation` has an outcome. Returns the final
    judge state on a pass; raises Outcome otherwise."""
    deadline = now() + timeout
    judge: Json = {}
    while True:
        st = client.status()
        judge = (st.get("analysis") or {}).get("judge") or {}
        state, mine = judge.get("state"), int(judge.get("generation") or 0) >= generation
        if state == "failed" and judge.get("slot") == slot and mine:
            raise Outcome(1, "rolled_back", f"the judge rolled {slot} back: {judge_numbers(judge)}", judge)
        if st.get("active") != slot and st.get("ramp") is None:
            why = render.change_line(st.get("last_change"))
            raise Outcome(1, "rolled_back", f"{slot} no longer takes traffic ({why})", judge)
        if mine and judge.get("slot") == slot:
            if state == "passed":
                return judge
            if state == "inconclusive" and judge.get("watch_until") is None and st.get("ramp") is None:
                raise Outcome(
                    1, "inconclusive", f"the bake of {slot} ended without a verdict: {judge_numbers(judge)}", judge
                )
        if state == "not_watching" and st.get("active") == slot and st.get("ramp") is None:
            return judge  # analysis.watch_after_switch is 0: there is no bake to wait for
        left = deadline - now()
        if left <= 0:
            what = f"judge {state}" + (f" {judge.get('slot')}" if judge.get("slot") else "")
            raise Outcome(3, "timeout", f"no verdict on {slot} after {render.seconds(timeout)} ({what})", judge)
        time.sleep(min(POLL, left))
