"""Shadow traffic results: per endpoint counts, noise and samples, and the `gates.shadow` gate.

Invariants:
- Memory is bounded whatever the traffic: at most `shadow.max_endpoints` endpoints (the rest are
  counted under one "*" endpoint), MAX_SETS distinct sets of differing places per endpoint (the
  rest merged), `shadow.samples` samples per endpoint, each with a body of at most 4 KiB a side.
- Noise is decided when the results are read, not when an outcome arrives: a place learned as noise
  after some answers differed there turns those answers into `same` too. `status` is never noise.
- The results are of one comparison: the idle slot with its upstreams. They are reset when that
  changes (a switch, a deploy to the idle slot, a reload that changes its upstreams), and by
  DELETE /v1/shadow; an outcome for a slot or upstreams that are no longer compared is dropped.
- `totals` (the metrics) only grow: a reset does not make a Prometheus counter go back.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from proxy.release.diff import covered, generalize

if TYPE_CHECKING:
    from proxy.release.shadow import Outcome
    from proxy.routing.state import Snapshot, Store

MAX_SETS: Final = 64
OTHER: Final = "* (other endpoints)"
RESULTS: Final = ("same", "differ", "error", "dropped", "skipped")
WORST: Final = 5  # endpoints named in a refusal


class Endpoint:
    __slots__ = ("errors", "key", "noise", "samples", "sets", "skipped", "unchanged")

    def __init__(self, key: str, samples: int) -> None:
        self.key = key
        self.unchanged = 0  # answers with no difference at all
        self.errors = 0
        self.skipped = 0
        self.sets: Counter[tuple[str, ...]] = Counter()  # differing places -> answers
        self.noise: dict[str, None] = {}  # ordered set of generalized places
        self.samples: deque[dict[str, Any]] = deque(maxlen=samples)

    def counts(self) -> tuple[int, int, Counter[str]]:
        """(same, differ, how often each place that is not noise differed)."""
        same, differ, places = self.unchanged, 0, Counter[str]()
        for where, n in self.sets.items():
            real = [p for p in where if p == "status" or not covered(p, self.noise)]
            if real:
                differ += n
                for place in real:
                    places[place] += n
            else:
                same += n
        return same, differ, places

    def json(self) -> dict[str, Any]:
        same, differ, places = self.counts()
        method, _, path = self.key.partition(" ")
        return {
            "method": method,
            "path": path,
            "mirrored": same + differ + self.errors + self.skipped,
            "same": same,
            "differ": differ,
            "errors": self.errors,
            "skipped": self.skipped,
            "diff_rate": round(differ / (same + differ), 6) if same + differ else None,
            "noise": list(self.noise),
            "top_differences": [{"where": w, "count": n} for w, n in places.most_common(10)],
        }


class ShadowResults:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.endpoints: dict[str, Endpoint] = {}
        self.totals: Counter[str] = Counter({r: 0 for r in RESULTS})
        self.dropped = 0  # since the last reset (totals["dropped"] never goes back)
        snap = store.current
        self.slot, self.upstreams = self._compared(snap)
        self.since = time.time()
        self.on_reset: list[Callable[[], None]] = []  # run after a reset (the mirror forgets its noise samples)
        self.dropped_source: Callable[[], int] | None = None  # this process's mirror: drops since last asked

    @staticmethod
    def _compared(snap: Snapshot) -> tuple[str, tuple[str, ...]]:
        idle = snap.idle_slot()
        return idle, tuple(u.url for u in snap.upstreams[idle])

    def on_publish(self, old: Snapshot, new: Snapshot) -> None:
        if self._compared(new) != (self.slot, self.upstreams):
            self.reset()

    def reset(self) -> None:
        self.endpoints = {}
        self.dropped = 0
        self.slot, self.upstreams = self._compared(self.store.current)
        self.since = time.time()
        for hook in self.on_reset:
            hook()

    def counts(self) -> dict[str, int]:
        """The metric's values (every result since start-up)."""
        self._pull()
        return dict(self.totals)

    def _pull(self) -> None:
        if self.dropped_source is not None:
            self.count_dropped(self.dropped_source())

    def count_dropped(self, n: int) -> None:
        if n > 0:
            self.totals["dropped"] += n
            self.dropped += n

    def add(self, outcome: Outcome) -> None:
        if (outcome.slot, outcome.upstreams) != (self.slot, self.upstreams):
            return  # mirrored before the idle slot changed
        settings = self.store.current.settings.shadow
        ep = self._endpoint(outcome.endpoint, settings.max_endpoints, settings.samples)
        for place in outcome.noise:
            if len(ep.noise) < 64:
                ep.noise[place] = None
        if outcome.result == "skipped":
            ep.skipped += outcome.count
            self.totals["skipped"] += outcome.count
            return
        if outcome.result == "error":
            ep.errors += 1
            self.totals["error"] += 1
            if outcome.sample is not None:
                ep.samples.append({"result": "error", "detail": outcome.detail, **outcome.sample})
            return
        if not outcome.places:
            ep.unchanged += outcome.count
            self.totals["same"] += outcome.count
            return
        key = outcome.places if outcome.places in ep.sets or len(ep.sets) < MAX_SETS else ("(other differences)",)
        ep.sets[key] += 1
        noise_only = all(p != "status" and covered(p, ep.noise) for p in outcome.places)
        self.totals["same" if noise_only else "differ"] += 1
        if not noise_only and outcome.sample is not None:
            ep.samples.append({"result": "differ", **outcome.sample})

    def _endpoint(self, key: str, limit: int, samples: int) -> Endpoint:
        ep = self.endpoints.get(key)
        if ep is None:
            if len(self.endpoints) >= limit:
                key = OTHER
                ep = self.endpoints.get(key)
            if ep is None:
                ep = self.endpoints[key] = Endpoint(key, samples)
        return ep

    def view(self) -> dict[str, Any]:
        """GET /v1/shadow."""
        self._pull()
        settings = self.store.current.settings.shadow
        rows = [ep.json() for ep in self.endpoints.values()]
        rows.sort(key=lambda r: (-(r["differ"] + r["errors"]), r["method"], r["path"]))
        totals = {k: sum(r[k] for r in rows) for k in ("mirrored", "same", "differ", "errors", "skipped")}
        compared = totals["same"] + totals["differ"]
        return {
            "slot": self.slot,
            "active": self.store.current.active,
            "upstreams": list(self.upstreams),
            "percent": settings.percent,
            "since": self.since,
            "totals": {
                **totals,
                "dropped": self.dropped,
                "diff_rate": round(totals["differ"] / compared, 6) if compared else None,
            },
            "endpoints": rows,
        }

    def samples(self, endpoint: str) -> list[dict[str, Any]] | None:
        """An endpoint's samples, their places split into differences and (as now known) noise."""
        ep = self.endpoints.get(endpoint)
        if ep is None:
            return None
        out = []
        for sample in ep.samples:
            places = sample.get("differences", [])
            noise = [p for p in places if p != "status" and covered(generalize(p), ep.noise)]
            out.append({**sample, "differences": [p for p in places if p not in noise], "noise": noise})
        return out

    def gate(self, slot: str) -> list[str]:
        """gates.shadow: refuse `slot` while an endpoint judged differs too often, or none can be judged."""
        config = self.store.current.settings.gates.shadow
        if config is None:
            return []
        if self.slot != slot:
            return [f"shadow: slot {slot} has not been compared (shadow traffic compares the idle slot {self.slot})"]
        judged = []
        for ep in self.endpoints.values():
            same, differ, places = ep.counts()
            if same + differ >= config.min_samples:
                judged.append((differ / (same + differ), ep.key, same + differ, places))
        if not judged:
            total = sum(sum(ep.counts()[:2]) for ep in self.endpoints.values())
            return [
                f"shadow: too few samples: no endpoint has {config.min_samples} compared answers yet "
                f"({total} in all; shadow.percent is {self.store.current.settings.shadow.percent})"
            ]
        failing = sorted((j for j in judged if j[0] > config.max_diff_rate), key=lambda j: -j[0])
        reasons = []
        for rate, key, n, places in failing[:WORST]:
            where = ", ".join(w for w, _ in places.most_common(3))
            reasons.append(
                f"shadow: {key} differs in {rate:.1%} of {n} answers (limit {config.max_diff_rate:.1%}): {where}"
            )
        if len(failing) > WORST:
            reasons.append(f"shadow: and {len(failing) - WORST} more endpoints over the limit")
        return reasons
