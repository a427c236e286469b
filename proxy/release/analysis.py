"""The judge's loop: every tick, read live windows, ask `judge.assess`, and act on the verdict.

What is judged:
- during a ramp: the ramp's target (candidate) against the active slot (baseline), over the same
  ticks, counted from the start of the ramp;
- for `analysis.watch_after_switch` after a cutover: the new active slot against the old slot's
  window as it was at the moment of the switch (the old slot stays warm meanwhile).

What happens:
- `failure_limit` failing verdicts in a row roll back at once (Controller.rollback), with the
  verdict's reasons and numbers in the audit trail and `slotswitch_rollbacks_total{reason}`;
- a passing verdict advances a ramp once its step's interval is over; an inconclusive one holds
  it (too little data is never a pass).

With `promql.checks` configured, the latest PromQL verdict for the subject (proxy.release.promql) is a
second input: a failing check makes the tick's verdict fail (rule "promql"; each PromQL result
counts once toward `failure_limit`, as Flagger's threshold counts failed checks), and a missing,
stale or inconclusive result holds a ramp that the in-process judge would advance.

`tick()` is synchronous and takes the time as an argument, so tests drive it tick by tick.

Fleet mode (proxy.fleet.sync): each replica judges its own share of the traffic (its windows count
only the requests it proxied), and a rollback or ramp step it decides is written through the
shared store as a task started from the tick, so it applies to every replica, or loses the race
to a change made first on any replica (logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from proxy.release.control import Conflict, Controller, Refused, Result, SharedApply, StoreUnavailable
from proxy.release.judge import Verdict, assess
from proxy.release.promql import PromQLVerdict
from proxy.routing.state import Snapshot
from proxy.routing.stats import Window

log = logging.getLogger("slotswitch.analysis")


@dataclass(frozen=True, slots=True)
class Watch:
    slot: str
    until: float
    since_tick: int
    baseline: Window


class Analyzer:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.store = controller.store
        self.ticks = 0
        self.failures = 0  # failing verdicts in a row
        self.last: Verdict | None = None
        self.subject = ""  # what the last verdict was about
        self.watch: Watch | None = None
        self.ramp_since_tick = 0
        self.subject_since = 0.0  # time.time() when the current ramp or watch began
        self.promql: PromQLVerdict | None = None  # the latest PromQL result (proxy.release.promql)
        self._promql_counted = 0  # seq of the last failing PromQL result counted toward failure_limit
        self._task: asyncio.Task[None] | None = None
        self.fleet: SharedApply | None = None  # fleet mode: decisions go through the shared store (proxy.fleet)
        self._action: asyncio.Task[None] | None = None  # a decision being written to the shared store
        self.store.subscribe(self._on_publish)

    def _window_ticks(self, snap: Snapshot) -> int:
        policy = snap.settings.analysis
        return max(1, math.ceil(policy.window / policy.tick))

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        if new.action == "ramp":
            self.ramp_since_tick = self.ticks
            self.subject_since = time.time()
            self.failures = 0
        if new.active != old.active and new.action == "switch":
            old_stats = new.routes[old.active].runtime.stats
            baseline = old_stats.window(self._window_ticks(new))
            until = time.time() + new.settings.analysis.watch_after_switch
            self.watch = Watch(new.active, until, self.ticks, baseline)
            self.subject_since = time.time()
            self.failures = 0
        if new.action == "rollback":
            self.watch = None
            self.failures = 0

    def tick(self, now: float | None = None) -> Verdict | None:
        """One judge tick: rotate the windows, judge, and act. Returns the verdict (None: nothing to judge)."""
        now = time.time() if now is None else now
        self.ticks += 1
        for runtime in self.controller.registry.runtimes.values():
            runtime.stats.rotate()
        snap = self.store.current
        subject = self._subject(snap, now)
        if subject is None:
            self.last, self.subject = None, ""
            return None
        name, candidate, baseline = subject
        verdict, counts = self._with_promql(snap, name, assess(snap.settings.analysis, candidate, baseline), now)
        self.last, self.subject = verdict, name
        if verdict.outcome == "fail":
            if counts:
                self.failures += 1
            if self.failures >= snap.settings.analysis.failure_limit:
                self._roll_back(snap, name, verdict)
            return verdict
        self.failures = 0
        ramp = snap.ramp
        due = ramp is not None and not ramp.paused and now - ramp.step_started_at >= ramp.interval
        if verdict.outcome == "pass" and due:
            self._advance(snap, verdict)
        return verdict

    def candidate(self, now: float | None = None) -> str | None:
        """The slot under judgement now: the ramp's target, or the new active slot while watched."""
        now = time.time() if now is None else now
        snap = self.store.current
        if snap.ramp is not None:
            return snap.ramp.target
        watch = self.watch
        if watch is None or watch.slot != snap.active or now > watch.until or snap.phase == "rolled_back":
            return None
        return watch.slot

    def take_promql(self, verdict: PromQLVerdict) -> None:
        """The PromQL poller's sink: keep the latest result for the next ticks."""
        self.promql = verdict

    def _with_promql(self, snap: Snapshot, slot: str, verdict: Verdict, now: float) -> tuple[Verdict, bool]:
        """The judge's verdict combined with the latest PromQL result, and whether it is a new
        failure (a failing PromQL result counts once, however many ticks it stays the latest)."""
        policy = snap.settings.promql
        if not policy.checks or verdict.outcome == "fail":
            return verdict, True
        result = self.promql
        if result is None or result.slot != slot or result.started < self.subject_since:
            return _hold(verdict, "waiting for the first PromQL result", {}), False
        if now - result.started > 2 * policy.interval + policy.timeout:
            return _hold(verdict, f"the last PromQL result is {now - result.started:.0f}s old", {}), False
        numbers = {**verdict.numbers, **result.numbers()}
        if result.outcome == "fail":
            new = result.seq != self._promql_counted
            self._promql_counted = result.seq
            return Verdict("fail", result.reasons, "promql", numbers), new
        if result.outcome == "inconclusive":
            return _hold(verdict, "; ".join(result.reasons), numbers), False
        return Verdict(verdict.outcome, verdict.reasons, verdict.rule, numbers), False

    def _subject(self, snap: Snapshot, now: float) -> tuple[str, Window, Window | None] | None:
        window = self._window_ticks(snap)
        if snap.ramp is not None:
            ticks = min(window, self.ticks - self.ramp_since_tick)
            candidate = snap.routes[snap.ramp.target].runtime.stats.window(ticks)
            baseline = snap.primary.runtime.stats.window(ticks)
            return snap.ramp.target, candidate, baseline
        watch = self.watch
        if watch is None or watch.slot != snap.active or now > watch.until or snap.phase == "rolled_back":
            self.watch = None if watch is not None and now > watch.until else watch
            return None
        ticks = min(window, self.ticks - watch.since_tick)
        return snap.active, snap.primary.runtime.stats.window(ticks), watch.baseline

    def _roll_back(self, snap: Snapshot, slot: str, verdict: Verdict) -> None:
        details: dict[str, object] = {"rule": verdict.rule, "slot": slot, "reasons": list(verdict.reasons)}
        details.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in verdict.numbers.items()})
        rollback = partial(
            self.controller.rollback,
            actor="judge",
            trigger="judge",
            reason=f"slot {slot} failed analysis: " + "; ".join(verdict.reasons),
            expect=snap.generation,
            details=details,
        )

        def done() -> None:
            self.failures = 0
            log.error("automatic rollback from %s: %s", slot, "; ".join(verdict.reasons))

        self._act(rollback, done, logging.WARNING, "judge could not roll back")

    def _advance(self, snap: Snapshot, verdict: Verdict) -> None:
        numbers: dict[str, object] = {k: v for k, v in verdict.numbers.items() if not math.isnan(v)}
        promote = partial(
            self.controller.promote,
            actor="judge",
            trigger="ramp",
            reason="step passed analysis",
            expect=snap.generation,
            details=numbers,
        )
        self._act(promote, lambda: None, logging.INFO, "ramp step not advanced")

    def _act(self, verb: Callable[[], Result], done: Callable[[], None], level: int, failed: str) -> None:
        """Apply the judge's decision. In fleet mode it goes through the shared store (a task, one
        at a time); pinned to the judged generation, it loses to any change made first anywhere."""
        fleet = self.fleet
        if fleet is None:
            try:
                verb()
            except (Conflict, Refused) as exc:
                log.log(level, "%s: %s", failed, exc)
                return
            done()
            return
        if self._action is not None and not self._action.done():
            return  # the previous decision is still being written
        self._action = asyncio.get_running_loop().create_task(self._act_fleet(fleet, verb, done, level, failed))

    async def _act_fleet(
        self, fleet: SharedApply, verb: Callable[[], Result], done: Callable[[], None], level: int, failed: str
    ) -> None:
        try:
            await fleet.run(verb)
        except (Conflict, Refused, StoreUnavailable) as exc:
            log.log(level, "%s: %s", failed, exc)
            return
        done()

    def status(self) -> dict[str, object]:
        verdict = self.last
        return {
            "subject": self.subject or None,
            "outcome": verdict.outcome if verdict else None,
            "reasons": list(verdict.reasons) if verdict else [],
            "failures_in_a_row": self.failures,
            "watching_until": self.watch.until if self.watch else None,
            "promql": self.promql.as_json() if self.promql is not None else None,
        }

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.store.current.settings.analysis.tick)
            try:
                self.tick()
            except Exception:
                log.exception("judge tick failed")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._action) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _hold(verdict: Verdict, reason: str, numbers: dict[str, float]) -> Verdict:
    """Not a pass: a verdict the PromQL checks cannot confirm yet holds the ramp."""
    return Verdict("inconclusive", (*verdict.reasons, reason), numbers={**verdict.numbers, **numbers})
