"""What the judge is shown: each slot's outcomes accumulated over a whole release, from its ticks.

A *release* is what one error budget covers (proxy.release.judge): a ramp and the bake after its
last step, or a switch and its bake, or the bake of the slot a rollback reached. Its evidence is
cumulative over each step (a ramp step, or the bake), never a sliding window, so a slow service
still accumulates enough, and the judge's tests stay valid however often they are looked at.

Invariants:
- Pure bookkeeping: no clock (the caller passes `now`), no I/O; fed once per judge tick with the
  tick each slot just closed (proxy.routing.stats), so nothing here runs per request.
- The baseline is what the judge compares with: during a ramp step the stable slot's concurrent
  traffic in that step; after a plain switch a fixed window of the old slot's traffic before it
  (`analysis.baseline_window`); after a ramp's last step, the stable slot's traffic over the whole
  ramp and before it (the odd ticks of its `baseline_window` before the ramp), frozen: a short
  ramp's few seconds alone are too small a baseline for a bake. A release reached by a rollback has
  no baseline (absolute limits only).
- Latency thresholds and the hang limit are taken from baseline data before the release began that
  the tests do not use, and frozen for the release.
- Hung requests are never timed one by one: among the requests started before `now - limit`, at
  most the number completed since can have finished, so `started(now - limit) - completed(now)` is
  a lower bound on requests older than the limit still in flight. The count kept is the running
  maximum of that bound, so it only grows. A WebSocket or other tunnel leaves `started` once
  answered (proxy.datapath.upstream), so long-lived tunnels never look hung.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from proxy.release.judge import Arm, Evidence, JudgePolicy, hang_limit, latency_thresholds
from proxy.routing.stats import Tick, Window

Kind = Literal["ramp", "bake"]


def total(ticks: Iterable[Tick], bounds: tuple[float, ...]) -> Window:
    return Window(bounds, ticks)


def arm(window: Window, hung: int) -> Arm:
    """A slot's accumulated window as the judge's Arm. 499 (the client left before any answer)
    counts as a failure with 5xx and hung requests; endpoints carry failures over the arm's requests."""
    ok = window.total - window.errors - window.client_errors - window.abandoned
    requests = window.total + hung
    endpoints = {key: (requests, n) for key, n in window.endpoints.items()}
    return Arm(
        ok=max(0, ok),
        client_4xx=window.client_errors,
        server_5xx=window.errors,
        transport=window.abandoned,
        hung=hung,
        lat=tuple(window.lat),
        bounds=window.bounds,
        endpoints=endpoints,
        per_arm=True,
    )


@dataclass
class HangCounter:
    """The lower bound on one slot's requests in flight longer than `limit`, as a running maximum."""

    limit: float
    starts: deque[tuple[float, int]] = field(default_factory=deque)  # (time, started so far)
    hung: int = 0

    def update(self, now: float, started: int, completed: int) -> int:
        self.starts.append((now, started))
        cutoff = now - self.limit
        old = 0  # started by the cutoff
        while self.starts and self.starts[0][0] <= cutoff:
            old = self.starts.popleft()[1]
            if not self.starts or self.starts[0][0] > cutoff:
                self.starts.appendleft((cutoff, old))
                break
        self.hung = max(self.hung, old - completed, 0)
        return self.hung


@dataclass
class Release:
    """One release under judgement (see the module docstring). Evidence restarts at every ramp step,
    each step an e-process at `1 / steps` of the release's alpha (one alpha per release, Bonferroni
    over its steps): pooling steps whose traffic share differs would let a transient that hits both
    slots weigh more in the candidate's pool than in the baseline's (Simpson's paradox;
    bench/judge.py's shared-burst case). The last step, the bake after a ramp, is compared with all
    of the stable slot's traffic during the ramp and its odd ticks before it."""

    slot: str
    kind: Kind
    started_at: float
    baseline_slot: str | None
    baseline_kind: Literal["concurrent", "pre_switch", "none"]
    bounds: tuple[float, ...]
    cand: Window
    base: Window | None
    thresholds: tuple[float, ...]
    hang: HangCounter
    base_hang: HangCounter | None
    steps: int = 1  # e-processes the release's alpha is split over
    ramp_base: Window | None = None  # the stable slot over the whole ramp: the bake's baseline
    until: float = math.inf  # a bake's end (epoch seconds); inf: forever, or a ramp
    step_started_at: float = 0.0
    inconclusive_since: float | None = None

    @classmethod
    def begin(
        cls,
        slot: str,
        kind: Kind,
        now: float,
        policy: JudgePolicy,
        *,
        bounds: tuple[float, ...],
        history: Sequence[Tick],
        baseline_slot: str | None,
        concurrent: bool,
        steps: int = 1,
    ) -> Release:
        """A new release. `history`: the baseline slot's closed ticks before `now` (the slot itself
        without a baseline). Latency thresholds and the hang limit come from data the tests do not
        use: its even ticks. Its odd ticks are the baseline after a switch, and the start of the
        baseline of a ramp's bake (with the stable slot's concurrent traffic during the ramp)."""
        before = None  # a ramp's bake compares with the stable slot's odd pre-ramp ticks too
        if baseline_slot is None:
            base, kind_of, sample = None, "none", total(history, bounds)
        elif concurrent:
            base, kind_of, sample = Window(bounds), "concurrent", total(history[0::2], bounds)
            before = total(history[1::2], bounds)
        else:
            base, kind_of, sample = total(history[1::2], bounds), "pre_switch", total(history[0::2], bounds)
        thresholds: tuple[float, ...] = ()
        limit = policy.max_hang
        if sample.total:
            thresholds = latency_thresholds(sample.lat, sample.bounds, policy.latency_quantiles)
            limit = hang_limit(sample.lat, sample.bounds, policy)
        return cls(
            slot=slot,
            kind=kind,
            started_at=now,
            baseline_slot=baseline_slot,
            baseline_kind=kind_of,  # type: ignore[arg-type]
            bounds=bounds,
            cand=Window(bounds),
            base=base,
            thresholds=thresholds,
            hang=HangCounter(limit),
            base_hang=HangCounter(limit) if kind_of == "concurrent" else None,
            steps=max(1, steps),
            ramp_base=before,
            step_started_at=now,
        )

    def feed(self, now: float, cand_tick: Tick, base_tick: Tick | None) -> None:
        """Add the ticks the slots just closed."""
        self.cand.add(cand_tick)
        self.hang.update(now, self.cand.started, self.cand.total)
        if self.base_hang is not None and self.base is not None and base_tick is not None:
            self.base.add(base_tick)
            self.base_hang.update(now, self.base.started, self.base.total)
            if self.ramp_base is not None:
                self.ramp_base.add(base_tick)

    def new_step(self, now: float) -> None:
        """A ramp step: both arms start again (the same thresholds and hang limit)."""
        self.step_started_at = now
        self.inconclusive_since = None
        self.cand = Window(self.bounds)
        self.hang = HangCounter(self.hang.limit)
        if self.base_hang is not None:
            self.base = Window(self.bounds)
            self.base_hang = HangCounter(self.hang.limit)

    def to_bake(self, now: float, until: float) -> None:
        """The ramp's last step: the candidate takes all traffic and bakes against the stable slot's
        traffic during the whole ramp and its odd ticks before it, frozen."""
        self.new_step(now)
        self.kind, self.until = "bake", until
        self.base, self.base_hang = self.ramp_base, None
        self.baseline_kind = "pre_switch"

    def evidence(self, *, compare: bool = True) -> Evidence:
        """The current step's evidence; `compare=False` leaves the baseline out (absolute limits only)."""
        cand = arm(self.cand, self.hang.hung)
        base = None
        if self.base is not None and compare:
            base = arm(self.base, self.base_hang.hung if self.base_hang is not None else 0)
        return Evidence(
            candidate=cand,
            baseline=base,
            baseline_kind="concurrent" if self.baseline_kind == "concurrent" else "pre_switch",
            latency_thresholds=self.thresholds,
            hang_limit=self.hang.limit,
            step_requests=cand.requests,
            alpha_share=1.0 / self.steps,
        )

    def describe(self) -> dict[str, object]:
        """What is compared, for the status."""
        return {
            "kind": self.kind,
            "slot": self.slot,
            "since": self.started_at,
            "step_since": self.step_started_at,
            "baseline": self.baseline_slot,
            "baseline_kind": self.baseline_kind,
            "baseline_requests": self.base.total if self.base is not None else 0,
            "latency_thresholds_ms": [round(t * 1000, 3) for t in self.thresholds],
            "hang_limit_s": self.hang.limit,
            "requests": self.cand.total + self.hang.hung,
            "hung": self.hang.hung,
            "alpha_share": round(1.0 / self.steps, 4),
        }
