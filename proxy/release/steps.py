"""What the judge's loop does with a verdict: the one decision that the live loop
(proxy.release.analysis) and the replay (bench/judge.py) both call, so the replay measures the
code that runs.

Invariants:
- Pure: no clock, no I/O; the caller passes `now` and the ramp step's timing. The only state it
  touches is `Release.inconclusive_since` (when the current inconclusive run began, for the status).
- A failing verdict rolls back. A pass advances a ramp step once its interval is over (never
  before), and ends a bake once the bake is over; before that it waits. Anything else holds: past
  `max_inconclusive` in a ramp step (or past a bake's end), `on_inconclusive` applies: "rollback"
  (unless the release was reached by a rollback: nowhere left to go) or "hold" (a ramp stays
  where it is; a bake ends inconclusive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.release.evidence import Release

Action = Literal["rollback", "advance", "wait", "pass", "hold", "end_inconclusive", "rollback_inconclusive"]


@dataclass(frozen=True, slots=True)
class RampClock:
    """The ramp step being judged: when it began, how long it lasts, and whether it is paused."""

    step_started_at: float
    interval: float
    paused: bool = False


def waited_since(release: Release, ramp: RampClock | None) -> float:
    """Since when an inconclusive verdict counts against `max_inconclusive`: the ramp step's start,
    or the bake's end."""
    if release.kind == "ramp":
        return ramp.step_started_at if ramp is not None else release.step_started_at
    return release.until


def decide(
    release: Release,
    outcome: str,
    now: float,
    ramp: RampClock | None,
    *,
    max_inconclusive: float,
    on_inconclusive: str,
    may_roll_back: bool = True,
) -> Action:
    """The action for one tick's verdict `outcome` ("pass", "fail" or "inconclusive"). `ramp`: the
    ramp step when the release is a ramp (None: the ramp is not this release's any more: wait)."""
    if outcome == "fail":
        return "rollback"
    if release.kind == "ramp":
        if ramp is None:
            return "wait"
        if outcome == "pass":
            release.inconclusive_since = None
            due = not ramp.paused and now - ramp.step_started_at >= ramp.interval
            return "advance" if due else "wait"
    elif now < release.until:
        if outcome == "pass":
            release.inconclusive_since = None
        return "wait"
    elif outcome == "pass":
        return "pass"
    if release.inconclusive_since is None:
        release.inconclusive_since = now
    if now - waited_since(release, ramp) < max_inconclusive:
        return "wait"
    if on_inconclusive == "rollback" and may_roll_back:
        return "rollback_inconclusive"
    return "hold" if release.kind == "ramp" else "end_inconclusive"
