"""What the judge is shown: each slot's outcomes accumulated over a whole release, from its ticks.

A *release* is what one e-process judges (proxy.release.judge): a ramp and the bake after its last
step, or a switch and its bake, or the bake of the slot a rollback reached. Its evidence is
cumulative from its start, never a sliding window, so a slow service still accumulates enough, and
the judge's tests stay valid however often they are looked at.

Invariants:
- Pure bookkeeping: no clock (the caller passes `now`), no I/O; fed once per judge tick with the
  tick each slot just closed (proxy.routing.stats), so nothing here runs per request.
- The baseline is what the judge compares with: during a ramp the stable slot's concurrent traffic
  since the ramp began; after a plain switch a fixed window of the old slot's traffic before it
  (`analysis.baseline_window`); after a ramp's last step, the ramp's baseline, frozen. A release
  reached by a rollback has no baseline (absolute limits only).
- Latency thresholds and the hang limit are taken from baseline data before the release began and
  frozen for the release: the tests never pick a threshold from the data they then test.
- Hung requests are never timed one by one: among the requests started before `now - limit`, at
  most the number completed since can have finished, so `started(now - limit) - completed(now)` is
  a lower bound on requests older than the limit still in flight. The count kept is the running
  maximum of that bound, so it only grows. A WebSocket or other tunnel leaves `started` once
  answered (proxy.datapath.upstream), so long-lived tunnels never look hung.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
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
    """One release under judgement (see the module docstring)."""

    slot: str
    kind: Kind
    started_at: float
    baseline_slot: str | None
    baseline_kind: Literal["concurrent", "pre_switch", "none"]
    cand: Window
    base: Window | None
    thresholds: tuple[float, ...]
    hang: HangCounter
    base_hang: HangCounter | None
    until: float = math.inf  # a bake's end (epoch seconds); inf: forever, or a ramp
    step_started_at: float = 0.0
    step_base_requests: int = 0  # candidate requests when the current step (or the bake) began
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
        history: Window | None,
        baseline_slot: str | None,
        concurrent: bool,
    ) -> Release:
        """A new release. `history`: the baseline slot's traffic before `now` (thresholds, hang
        limit; and, for a switch, the baseline itself)."""
        thresholds: tuple[float, ...] = ()
        limit = policy.max_hang
        if history is not None and history.total:
            thresholds = latency_thresholds(history.lat, history.bounds, policy.latency_quantiles)
            limit = hang_limit(history.lat, history.bounds, policy)
        if baseline_slot is None:
            base, kind_of = None, "none"
        elif concurrent:
            base, kind_of = Window(bounds), "concurrent"
        else:
            base, kind_of = history, "pre_switch"
        return cls(
            slot=slot,
            kind=kind,
            started_at=now,
            baseline_slot=baseline_slot,
            baseline_kind=kind_of,  # type: ignore[arg-type]
            cand=Window(bounds),
            base=base,
            thresholds=thresholds,
            hang=HangCounter(limit),
            base_hang=HangCounter(limit) if kind_of == "concurrent" else None,
            step_started_at=now,
        )

    def feed(self, now: float, cand_tick: Tick, base_tick: Tick | None) -> None:
        """Add the ticks the slots just closed."""
        self.cand.add(cand_tick)
        self.hang.update(now, self.cand.started, self.cand.total)
        if self.base_hang is not None and self.base is not None and base_tick is not None:
            self.base.add(base_tick)
            self.base_hang.update(now, self.base.started, self.base.total)

    def freeze_baseline(self) -> None:
        """The baseline slot stopped serving (a ramp's last step): keep what it gave, add nothing more."""
        self.base_hang = None
        if self.baseline_kind == "concurrent":
            self.baseline_kind = "pre_switch"

    def new_step(self, now: float) -> None:
        self.step_started_at = now
        self.step_base_requests = self.cand.total + self.hang.hung
        self.inconclusive_since = None

    def evidence(self, *, compare: bool = True) -> Evidence:
        """The evidence so far; `compare=False` leaves the baseline out (absolute limits only)."""
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
            step_requests=cand.requests - self.step_base_requests,
        )

    def describe(self) -> dict[str, object]:
        """What is compared, for the status."""
        return {
            "kind": self.kind,
            "slot": self.slot,
            "since": self.started_at,
            "baseline": self.baseline_slot,
            "baseline_kind": self.baseline_kind,
            "baseline_requests": self.base.total if self.base is not None else 0,
            "latency_thresholds_ms": [round(t * 1000, 3) for t in self.thresholds],
            "hang_limit_s": self.hang.limit,
            "requests": self.cand.total + self.hang.hung,
            "hung": self.hang.hung,
        }
