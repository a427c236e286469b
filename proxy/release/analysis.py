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
from proxy.release.split import SplitMeter
from proxy.routing.state import Snapshot
from proxy.routing.stats import Window

log = logging.getLogger("slotswitch.analysis")


@dataclass(frozen=True, slots=True)
class Watch:
    slot: str
    until: float
    since_tick: int
    baseline: Window
    cause: str = "switch"  # or "rollback": the slot a rollback reached is watched too
    generation: int = 0  # the snapshot that started the watch


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the last judged episode (a ramp and its bake, or a switch's bake) ended."""

    state: str  # "passed", "failed" (and rolled back) or "inconclusive" (the watch ended without a verdict)
    slot: str
    since: float
    generation: int  # the snapshot that began the episode (passed) or the rollback (failed)
    reasons: tuple[str, ...] = ()
    numbers: dict[str, object] | None = None


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
        self.outcome: Outcome | None = None  # how the last episode ended (the judge state contract)
        self.episode_generation = 0  # the snapshot that began the current ramp or watch
        self.inconclusive_since: float | None = None  # when the current run of inconclusive verdicts began
        self.store.subscribe(self._on_publish)
        self.split = SplitMeter(self.store)  # the split the traffic got (read by the status)

    def _window_ticks(self, snap: Snapshot) -> int:
        policy = snap.settings.analysis
        return max(1, math.ceil(policy.window / policy.tick))

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        now = time.time()
        if new.action == "ramp":
            self.ramp_since_tick = self.ticks
            self.subject_since = now
            self.failures = 0
            self.outcome, self.episode_generation, self.inconclusive_since = None, new.generation, None
        if new.action == "rollback":
            if new.trigger in ("judge", "alert"):
                numbers = {k: v for k, v in new.details.items() if k not in ("from", "to", "reasons", "slot", "rule")}
                left = str(new.details.get("from", old.ramp.target if old.ramp is not None else old.active))
                reasons = new.details.get("reasons")
                why = tuple(str(r) for r in reasons) if isinstance(reasons, list) else (new.reason,)
                self.outcome = Outcome("failed", left, now, new.generation, why, numbers)
            else:
                self.outcome = None
            self.failures, self.inconclusive_since = 0, None
        if new.active != old.active and new.action in ("switch", "rollback"):
            # Any switch, a rollback included, is watched with the same bake time.
            old_stats = new.routes[old.active].runtime.stats
            baseline = old_stats.window(self._window_ticks(new))
            bake = new.settings.analysis.watch_after_switch
            until = now + bake
            self.watch = (
                Watch(new.active, until, self.ticks, baseline, new.action, new.generation) if bake > 0 else None
            )
            self.subject_since = now
            self.failures, self.inconclusive_since = 0, None
            if new.action == "switch":
                self.outcome = None
                if old.ramp is None or old.ramp.target != new.active:  # a ramp's last step continues its episode
                    self.episode_generation = new.generation
        elif new.action == "rollback":  # a ramp dropped: the active slot did not change
            self.watch = None

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
        if verdict.outcome != "inconclusive":
            self.inconclusive_since = None
        elif self.inconclusive_since is None:
            self.inconclusive_since = now
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
        if watch is None or watch.slot != snap.active or now > watch.until:
            return None
        return watch.slot

    def _expire(self, now: float) -> None:
        """End a watch whose bake time is over: its outcome is the last verdict's."""
        watch = self.watch
        if watch is None or now <= watch.until:
            return
        self.watch = None
        if watch.cause == "rollback" or watch.slot != self.store.current.active:
            return  # the watch after a rollback keeps the rollback's outcome
        last = self.last if self.subject == watch.slot else None
        numbers = _plain(last.numbers) if last is not None else {}
        if last is not None and last.outcome == "pass":
            self.outcome = Outcome("passed", watch.slot, watch.until, self.episode_generation, last.reasons, numbers)
        else:
            why = last.reasons if last is not None else ("no verdict: no requests were judged",)
            self.outcome = Outcome("inconclusive", watch.slot, watch.until, self.episode_generation, why, numbers)

    def held(self, now: float) -> str | None:
        """Why a ramp whose step interval is over has not advanced (None: not held)."""
        ramp = self.store.current.ramp
        if ramp is None or ramp.paused or now - ramp.step_started_at < ramp.interval:
            return None
        verdict = self.last if self.subject == ramp.target else None
        if verdict is None:
            return "held: waiting for the first verdict"
        if verdict.outcome == "inconclusive":
            low = any(r.startswith("only ") for r in verdict.reasons)
            return ("held: needs more traffic: " if low else "held: ") + "; ".join(verdict.reasons)
        if verdict.outcome == "fail":
            return "held: failing analysis: " + "; ".join(verdict.reasons)
        return "due: advances on the next tick"

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
        self._expire(now)
        watch = self.watch
        if watch is None or watch.slot != snap.active:
            return None
        ticks = min(window, self.ticks - watch.since_tick)
        return snap.active, snap.primary.runtime.stats.window(ticks), watch.baseline

    def _roll_back(self, snap: Snapshot, slot: str, verdict: Verdict) -> None:
        details: dict[str, object] = {"rule": verdict.rule, "slot": slot, "reasons": list(verdict.reasons)}
        details.update(_plain(verdict.numbers))
        rollback = partial(
            self.controller.rollback,
            actor="judge",
            trigger="judge",
            reason=f"slot {slot} failed analysis: " + "; ".join(verdict.reasons),
            expect=snap.generation,
            details=details,
        )

        def done(result: Result) -> None:
            self.failures = 0
            if result.changed:
                log.error("automatic rollback from %s: %s", slot, "; ".join(verdict.reasons))
            else:
                log.warning("slot %s failed analysis; no rollback: %s", slot, result.message)

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
        self._act(promote, lambda _: None, logging.INFO, "ramp step not advanced")

    def _act(self, verb: Callable[[], Result], done: Callable[[Result], None], level: int, failed: str) -> None:
        """Apply the judge's decision. In fleet mode it goes through the shared store (a task, one
        at a time); pinned to the judged generation, it loses to any change made first anywhere."""
        fleet = self.fleet
        if fleet is None:
            try:
                result = verb()
            except (Conflict, Refused) as exc:
                log.log(level, "%s: %s", failed, exc)
                return
            done(result)
            return
        if self._action is not None and not self._action.done():
            return  # the previous decision is still being written
        self._action = asyncio.get_running_loop().create_task(self._act_fleet(fleet, verb, done, level, failed))

    async def _act_fleet(
        self, fleet: SharedApply, verb: Callable[[], Result], done: Callable[[Result], None], level: int, failed: str
    ) -> None:
        try:
            result = await fleet.run(verb)
        except (Conflict, Refused, StoreUnavailable) as exc:
            log.log(level, "%s: %s", failed, exc)
            return
        done(result)

    def status(self, now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        self._expire(now)
        verdict = self.last
        return {
            "subject": self.subject or None,
            "outcome": verdict.outcome if verdict else None,
            "reasons": list(verdict.reasons) if verdict else [],
            "failures_in_a_row": self.failures,
            "watching_until": self.watch.until if self.watch else None,
            "promql": self.promql.as_json() if self.promql is not None else None,
            "judge": self.judge_state(now),
        }

    def judge_state(self, now: float) -> dict[str, object]:
        """The judge state contract (docs/admin-api.md): one state, its slot, since when, why and
        the numbers; what follows an inconclusive run; when the watch ends (None: it does not)."""
        snap, watch, outcome = self.store.current, self.watch, self.outcome
        subject = self.candidate(now)
        state: dict[str, object] = {"on_inconclusive": "hold", "watch_until": None, "watching": subject}
        if subject is not None and not (outcome is not None and watch is not None and watch.cause == "rollback"):
            verdict = self.last if self.subject == subject else None
            inconclusive = verdict is not None and verdict.outcome == "inconclusive"
            since = self.inconclusive_since if inconclusive and self.inconclusive_since else self.subject_since
            state.update(
                state="inconclusive" if inconclusive else "judging",
                slot=subject,
                since=since,
                generation=self.episode_generation,
                reasons=list(verdict.reasons) if verdict else ["waiting for the first verdict"],
                numbers=_plain(verdict.numbers) if verdict else {},
                watch_until=watch.until if snap.ramp is None and watch is not None else None,
            )
            return state
        if outcome is not None:
            state.update(
                state=outcome.state,
                slot=outcome.slot,
                since=outcome.since,
                generation=outcome.generation,
                reasons=list(outcome.reasons),
                numbers=dict(outcome.numbers or {}),
                watch_until=watch.until if subject is not None and watch is not None else None,
            )
            return state
        state.update(state="not_watching", slot=None, since=self.subject_since or None, generation=0)
        state.update(reasons=[], numbers={})
        return state

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


def _plain(numbers: dict[str, float]) -> dict[str, object]:
    """Numbers for JSON: NaN (no data) becomes None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in numbers.items()}


def _hold(verdict: Verdict, reason: str, numbers: dict[str, float]) -> Verdict:
    """Not a pass: a verdict the PromQL checks cannot confirm yet holds the ramp."""
    return Verdict("inconclusive", (*verdict.reasons, reason), numbers={**verdict.numbers, **numbers})
