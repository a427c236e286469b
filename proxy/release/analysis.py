"""The judge's loop: every tick, add the slots' closed ticks to the release's evidence, ask
`judge.assess`, and act on the verdict.

What is judged (proxy.release.evidence): a ramp from its start, against the stable slot's concurrent
traffic, then for `analysis.bake_time` after its last step; a plain switch for `bake_time` against
the old slot's last `analysis.baseline_window` before it; the slot a rollback reached, for
`bake_time`, against absolute limits only. Evidence accumulates over the whole release.

What happens:
- a failing verdict rolls back at once (Controller.rollback), with the verdict's numbers in the
  audit trail and `slotswitch_rollbacks_total{reason}`. There is no `failure_limit`: every test is
  an e-process that stays valid however often it is looked at, so one failing verdict is evidence
  at the release's error budget (`analysis.false_rollback_rate`). A release reached by a rollback
  is never rolled back again (the other slot failed): its failure is logged and shown, not acted on.
- a passing verdict advances a ramp once its step's interval is over, and ends a bake that is over;
- an inconclusive one holds. Past `analysis.max_inconclusive` in one step (or past a bake's end),
  `analysis.on_inconclusive` applies: "hold" (the state says inconclusive, since when, and a
  WARNING is logged once) or "rollback".

With `promql.checks` configured, the latest PromQL verdict for the subject (proxy.release.promql)
is a second input: a failing check fails the tick's verdict (rule "promql"), and a missing, stale or
inconclusive result holds a ramp that the in-process judge would advance. PromQL checks are fixed
thresholds, not sequential tests, so they roll back only after `promql.failure_limit` failing
results in a row (each result counts once, however many ticks see it), as Flagger's threshold does.

`tick()` is synchronous and takes the time as an argument, so tests drive it tick by tick.

Fleet mode (proxy.fleet): each replica judges its own share of the traffic, and a rollback or ramp
step it decides is written through the shared store as a task started from the tick, so it
applies to every replica, or loses the race to a change made first on any replica (logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from proxy.release.control import Conflict, Controller, Refused, Result, SharedApply, StoreUnavailable
from proxy.release.evidence import Release
from proxy.release.judge import Verdict, assess
from proxy.release.policy import State, policy_of
from proxy.release.promql import PromQLVerdict
from proxy.release.split import SplitMeter
from proxy.release.steps import RampClock, decide, waited_since
from proxy.routing.state import Snapshot
from proxy.routing.stats import Tick

log = logging.getLogger("slotswitch.analysis")


class Analyzer:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.store = controller.store
        self.ticks = 0
        self.release: Release | None = None
        self.reached_by_rollback = False  # the release's slot is where a rollback went
        self.history: dict[str, deque[Tick]] = {}  # each slot's closed ticks, for a pre-switch baseline
        self.state = State("not_watching", "", time.time())  # the release under judgement, if any
        self.outcome: State | None = None  # how the last release ended: passed, failed or inconclusive
        self.generation = 0  # the snapshot that began the current release
        self.last: Verdict | None = None
        self.promql: PromQLVerdict | None = None  # the latest PromQL result (proxy.release.promql)
        self._promql_counted = 0  # seq of the last failing PromQL result counted
        self.failures = 0  # failing PromQL results in a row (fixed-threshold checks: `promql.failure_limit`)
        self._task: asyncio.Task[None] | None = None
        self.fleet: SharedApply | None = None  # fleet mode: decisions go through the shared store
        self._action: asyncio.Task[None] | None = None  # a decision being written to the shared store
        self.store.subscribe(self._on_publish)
        self.split = SplitMeter(self.store)  # the split the traffic got (read by the status)

    # -- what a publish starts or ends ------------------------------------------------------------

    def _begin(self, new: Snapshot, slot: str, kind: str, baseline: str | None, concurrent: bool, now: float) -> None:
        policy = policy_of(new.settings.analysis)
        history_slot = baseline if baseline is not None else slot
        release = Release.begin(
            slot,
            "ramp" if kind == "ramp" else "bake",
            now,
            policy,
            bounds=new.routes[slot].runtime.stats.bounds,
            history=list(self.history.get(history_slot, ())),
            baseline_slot=baseline,
            concurrent=concurrent,
            steps=len(new.ramp.steps) if kind == "ramp" and new.ramp is not None else 1,
        )
        if kind != "ramp":
            release.until = now + new.settings.analysis.bake_time
        self.release, self.reached_by_rollback = release, kind == "rollback"
        self._promql_counted = self.promql.seq if self.promql is not None else 0
        self.failures = 0
        self.state = State("judging", slot, now)

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        now = time.time()
        release = self.release
        if new.action == "ramp" and new.ramp is not None:
            self.outcome, self.generation = None, new.generation
            self._begin(new, new.ramp.target, "ramp", new.active, True, now)
        elif new.action == "promote" and release is not None and release.kind == "ramp":
            release.new_step(now)
        elif new.action == "switch" and new.active != old.active:
            if release is not None and release.kind == "ramp" and release.slot == new.active and old.ramp is not None:
                release.to_bake(now, now + new.settings.analysis.bake_time)  # the ramp's last step
            else:
                self.outcome, self.generation = None, new.generation
                self._begin(new, new.active, "switch", old.active, False, now)
            if new.settings.analysis.bake_time <= 0:
                self.release, self.state = None, State("not_watching", new.active, now, note="no bake time")
        elif new.action == "rollback":
            self._rolled_back(old, new, now)

    def _rolled_back(self, old: Snapshot, new: Snapshot, now: float) -> None:
        """A rollback ends the release: as "failed" when the judge or an alert decided it. The slot
        it reached is watched too, when the active slot changed (not for a ramp dropped)."""
        left = str(new.details.get("slot", old.ramp.target if old.ramp is not None else old.active))
        if new.trigger in ("judge", "alert"):
            reasons = new.details.get("reasons")
            why = tuple(str(r) for r in reasons) if isinstance(reasons, list) else (new.reason,)
            numbers = tuple((k, float(v)) for k, v in new.details.items() if isinstance(v, int | float))
            self.outcome = State("failed", left, now, why, "", "", new.generation, numbers)
        else:
            self.outcome = None
        self.release, self.state = None, State("not_watching", new.active, now, note="rolled back")
        if new.active != old.active and new.settings.analysis.bake_time > 0:
            self._begin(new, new.active, "rollback", None, False, now)

    def _end(self, name: str, slot: str, now: float, note: str = "", action: str = "") -> None:
        verdict = self.last
        reasons = verdict.reasons if verdict is not None else ()
        numbers = tuple(_key_numbers(verdict).items()) if verdict is not None else ()
        self.release = None
        self.state = State(name, slot, now, reasons, action, note, self.generation, numbers)
        if not self.reached_by_rollback:
            self.outcome = self.state

    # -- the tick -----------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> Verdict | None:
        """One judge tick: rotate the counters, judge, and act. Returns the verdict (None: nothing to judge)."""
        now = time.time() if now is None else now
        self.ticks += 1
        snap = self.store.current
        keep = max(1, math.ceil(snap.settings.analysis.baseline_window / snap.settings.analysis.tick))
        for name, route in snap.routes.items():
            stats = route.runtime.stats
            stats.rotate()
            history = self.history.get(name)
            if history is None or history.maxlen != keep:
                history = self.history[name] = deque(history or (), maxlen=keep)
            history.append(stats.ring[-1])
        release = self.release
        if release is None or release.slot not in snap.routes:
            self.last = None
            return None
        base_tick = None
        if release.baseline_slot is not None and release.baseline_slot in snap.routes:
            base_tick = snap.routes[release.baseline_slot].runtime.stats.ring[-1]
        release.feed(now, snap.routes[release.slot].runtime.stats.ring[-1], base_tick)
        policy = policy_of(snap.settings.analysis)
        verdict = assess(policy, release.evidence(compare=snap.settings.analysis.compare_to_baseline))
        verdict, acts = self._with_promql(snap, release.slot, verdict, now, release.started_at)
        self.last = verdict
        if verdict.outcome == "fail":
            if acts:
                self._fail(snap, release, verdict, now)
            return verdict
        if verdict.rule != "promql" and self.promql is not None and self.promql.outcome == "pass":
            self.failures = 0
        self._hold_or_advance(snap, release, verdict, now)
        return verdict

    def _fail(self, snap: Snapshot, release: Release, verdict: Verdict, now: float) -> None:
        if self.reached_by_rollback:
            if self.state.name != "failed":
                log.error(
                    "slot %s, reached by a rollback, fails analysis too (not rolled back again: the other slot "
                    "failed first): %s",
                    release.slot,
                    "; ".join(verdict.reasons),
                )
            self.state = State("failed", release.slot, now, verdict.reasons, "alert")
            return
        self.state = State("failed", release.slot, now, verdict.reasons, "", "", self.generation)
        self._roll_back(snap, release.slot, verdict, f"slot {release.slot} failed analysis: ")

    def _hold_or_advance(self, snap: Snapshot, release: Release, verdict: Verdict, now: float) -> None:
        """Act on a verdict that is not a failure: the decision is `proxy.release.steps.decide`."""
        settings = snap.settings.analysis
        ramp, clock = snap.ramp, None
        if release.kind == "ramp":
            if ramp is None or ramp.target != release.slot:
                return
            clock = RampClock(ramp.step_started_at, ramp.interval, ramp.paused)
            if verdict.outcome == "pass":
                self.state = State("judging", release.slot, self.state.since if self.state.name == "judging" else now)
        action = decide(
            release,
            verdict.outcome,
            now,
            clock,
            max_inconclusive=settings.max_inconclusive,
            on_inconclusive=settings.on_inconclusive,
            may_roll_back=not self.reached_by_rollback,
        )
        since = now if release.inconclusive_since is None else release.inconclusive_since
        if action == "advance":
            self._advance(snap, verdict)
        elif action == "pass":
            log.info("slot %s passed its bake (%s)", release.slot, _summary(verdict))
            self._end("passed", release.slot, now)
        elif action == "rollback_inconclusive":
            self.state = State("inconclusive", release.slot, since, verdict.reasons, "rollback")
            self._roll_back(snap, release.slot, verdict, f"slot {release.slot} stayed inconclusive: ")
        elif action in ("hold", "end_inconclusive"):
            if self.state.name != "inconclusive":
                why, waited = "; ".join(verdict.reasons), now - waited_since(release, clock)
                log.warning("slot %s inconclusive for %.0fs (holding): %s", release.slot, waited, why)
                self.state = State("inconclusive", release.slot, since, verdict.reasons, "hold")
            if action == "end_inconclusive":
                self._end("inconclusive", release.slot, since, "; ".join(verdict.reasons), "hold")

    def candidate(self, now: float | None = None) -> str | None:
        """The slot under judgement now: the ramp's target, or the new active slot while it bakes."""
        release = self.release
        return None if release is None else release.slot

    def take_promql(self, verdict: PromQLVerdict) -> None:
        """The PromQL poller's sink: keep the latest result for the next ticks."""
        self.promql = verdict

    def _with_promql(
        self, snap: Snapshot, slot: str, verdict: Verdict, now: float, since: float
    ) -> tuple[Verdict, bool]:
        """The judge's verdict combined with the latest PromQL result, and whether a failure is to
        be acted on (a failing PromQL result acts once, however many ticks it stays the latest)."""
        policy = snap.settings.promql
        if not policy.checks or verdict.outcome == "fail":
            return verdict, True
        result = self.promql
        if result is None or result.slot != slot or result.started < since:
            return _hold(verdict, "waiting for the first PromQL result", {}), False
        if now - result.started > 2 * policy.interval + policy.timeout:
            return _hold(verdict, f"the last PromQL result is {now - result.started:.0f}s old", {}), False
        numbers = {**verdict.numbers, **result.numbers()}
        if result.outcome == "fail":
            if result.seq != self._promql_counted:
                self._promql_counted = result.seq
                self.failures += 1
            return Verdict("fail", result.reasons, "promql", numbers), self.failures >= policy.failure_limit
        if result.outcome == "inconclusive":
            return _hold(verdict, "; ".join(result.reasons), numbers), False
        return Verdict(verdict.outcome, verdict.reasons, verdict.rule, numbers, verdict.tests), False

    # -- acting -------------------------------------------------------------------------------------

    def _roll_back(self, snap: Snapshot, slot: str, verdict: Verdict, why: str) -> None:
        details: dict[str, object] = {"rule": verdict.rule, "slot": slot, "reasons": list(verdict.reasons)}
        details.update({k: (None if math.isnan(v) else v) for k, v in verdict.numbers.items()})
        rollback = partial(
            self.controller.rollback,
            actor="judge",
            trigger="judge",
            reason=why + "; ".join(verdict.reasons),
            expect=snap.generation,
            details=details,
        )

        def done(result: Result) -> None:
            if result.changed:
                log.error("automatic rollback from %s: %s", slot, "; ".join(verdict.reasons))
            else:
                log.warning("slot %s failed analysis; no rollback: %s", slot, result.message)

        self._act(rollback, done, logging.WARNING, "judge could not roll back")

    def _advance(self, snap: Snapshot, verdict: Verdict) -> None:
        promote = partial(
            self.controller.promote,
            actor="judge",
            trigger="ramp",
            reason="step passed analysis",
            expect=snap.generation,
            details={k: v for k, v in _key_numbers(verdict).items() if not math.isnan(v)},
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

    # -- status -------------------------------------------------------------------------------------

    def held(self, now: float) -> str | None:
        """Why a ramp whose step interval is over has not advanced (None: not held)."""
        ramp, release, verdict = self.store.current.ramp, self.release, self.last
        if ramp is None or ramp.paused or now - ramp.step_started_at < ramp.interval:
            return None
        if release is None or release.slot != ramp.target or verdict is None:
            return "held: waiting for the first verdict"
        if verdict.outcome == "inconclusive":
            low = any("requests" in r for r in verdict.reasons)
            return ("held: needs more traffic: " if low else "held: ") + "; ".join(verdict.reasons)
        if verdict.outcome == "fail":
            return "held: failing analysis: " + "; ".join(verdict.reasons)
        return "due: advances on the next tick"

    def judge_state(self) -> dict[str, object]:
        """The judge state contract (docs/admin-api.md): one state, its slot, since when, why, the
        numbers, the generation that began it, what follows an inconclusive run, and until when the
        slot being watched is watched (None: a ramp, or forever)."""
        release, state, outcome = self.release, self.state, self.outcome
        on_inconclusive = self.store.current.settings.analysis.on_inconclusive
        until = None
        if release is not None and release.kind == "bake" and not math.isinf(release.until):
            until = release.until
        out: dict[str, object] = {"watch_until": until, "watching": release.slot if release is not None else None}
        verdict = self.last
        if release is not None and not (self.reached_by_rollback and outcome is not None):
            reasons = list(verdict.reasons) if verdict is not None else ["waiting for the first verdict"]
            return out | {
                "state": state.name,
                "slot": release.slot,
                "since": state.since,
                "generation": self.generation,
                "reasons": reasons,
                "numbers": _key_numbers(verdict) if verdict is not None else {},
                "on_inconclusive": state.action or on_inconclusive,
            }
        if outcome is not None:
            return out | {
                "state": outcome.name,
                "slot": outcome.slot,
                "since": outcome.since,
                "generation": outcome.generation,
                "reasons": list(outcome.reasons),
                "numbers": dict(outcome.numbers),
                "on_inconclusive": outcome.action or on_inconclusive,
            }
        return out | {
            "state": "not_watching",
            "slot": None,
            "since": state.since,
            "generation": 0,
            "reasons": [],
            "numbers": {},
            "on_inconclusive": on_inconclusive,
            "note": state.note,
        }

    def status(self, now: float | None = None) -> dict[str, object]:
        """The judge state (also under "judge", as the CLI reads it), what the release is compared
        with, the last verdict's outcome and the latest PromQL result."""
        judge = self.judge_state()
        release, verdict = self.release, self.last
        return {
            **judge,
            "judge": judge,
            "comparing": release.describe() if release is not None else None,
            "subject": release.slot if release is not None else None,
            "outcome": verdict.outcome if verdict is not None and release is not None else None,
            "watching_until": judge["watch_until"],
            "promql": self.promql.as_json() if self.promql is not None else None,
        }

    # -- the loop -----------------------------------------------------------------------------------

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


def _key_numbers(verdict: Verdict) -> dict[str, float]:
    """The numbers behind a verdict worth recording: counts, and each test's evidence and effect."""
    keep = ("requests", "failures", "hung", "baseline_requests", "baseline_failures")
    out = {k: v for k, v in verdict.numbers.items() if k in keep or not k.startswith("endpoint ")}
    for test in verdict.tests:
        if test.rejected and test.name.startswith("endpoint "):
            out.update({k: v for k, v in verdict.numbers.items() if k.startswith(test.name + ".")})
    return {k: v for k, v in out.items() if not math.isnan(v)}  # NaN: no data (and no JSON for it)


def _summary(verdict: Verdict) -> str:
    n = verdict.numbers
    return f"{n.get('requests', 0):.0f} requests, {n.get('failures', 0):.0f} failures"
