"""Live per-slot measurements: what the data path records and what the exporter and judge read.

The data path calls `SlotStats.record` once per finished request. It only adds to plain ints in
this process (no locks, no prometheus-client call per request); the Prometheus collector reads
the totals at scrape time, and the judge reads sliding windows made of fixed ticks.

Invariants:
- `record` is O(1): a few integer additions and list indexes (status codes are counted in a list by
  code, `by_code`; `codes` reads them as a dict). Its latency bucket is bisect_left(bounds, seconds):
  below CELLS / CELL seconds it is found from a table made at start-up (`first`: per 0.1 ms cell, the
  first bound the cell can reach), stepping over the few bounds a cell holds; slower requests bisect.
- One set of latency bounds serves both readers: fine buckets (0.5 ms growing by 12.5 %, for
  the judge's quantiles and rank test) merged with the configured Prometheus bounds, so every
  Prometheus bucket is an exact union of fine buckets (`prometheus_buckets`).
- `rotate` (called by the judge's ticker, not per request) closes the current tick; a window is
  the sum of the last N closed ticks plus the open one.
- A request's latency is counted once, in the open tick: `lat` holds the closed ticks' counts,
  added in by `rotate`, and `latencies()` (since start) is `lat` plus the open tick's.
- Status classes are counted apart: 5xx (`errors`), 4xx other than 499 (`client_errors`) and 499, a
  client that left before any answer (`abandoned`). `started` counts requests routed to the slot,
  so that the judge can bound how many are still in flight after a given age (a hung slot).
- A failing request (5xx) also counts toward its endpoint, `METHOD /path/{id}` (numeric, UUID and
  hex segments folded), at most MAX_ENDPOINTS per tick and the rest as "other": work paid only when
  a request fails.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import Final, TypedDict

FINE_BOUNDS: tuple[float, ...] = tuple(0.0005 * 1.125**i for i in range(106))
MAX_ENDPOINTS: Final = 64
CODES: Final = 600  # status codes are counted in a list of this many (SlotStats.by_code)
CELL: Final = 10000.0  # record()'s lookup table: cells per second (0.1 ms each) ...
CELLS: Final = 2000  # ... and how many (up to 0.2 s); a slower request bisects
OTHER_ENDPOINT: Final = "other"
_HEX: Final = frozenset("0123456789abcdefABCDEF-")


def _is_id(segment: str) -> bool:
    """A path segment that names one item: digits, a UUID, or a long hex string with a digit."""
    if not segment:
        return False
    if segment.isdigit():
        return True
    return len(segment) >= 8 and all(c in _HEX for c in segment) and any(c.isdigit() for c in segment)


def endpoint_key(method: bytes, target: bytes) -> str:
    """`GET /api/orders/{id}` for `GET /api/orders/1234?x=1` (at most 8 segments kept)."""
    path = target.decode("latin-1").split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):  # absolute-form or authority-form targets: keep the path part
        start = path.find("/", path.find("//") + 2) if "//" in path else -1
        path = path[start:] if start >= 0 else "/"
    parts = path.split("/")[1:9]
    return method.decode("latin-1") + " /" + "/".join("{id}" if _is_id(p) else p for p in parts)


def latency_bounds(prometheus: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sorted(set(FINE_BOUNDS) | set(prometheus)))


class Report(TypedDict):
    """A worker's counts since its last report (see SlotStats.take / merge)."""

    codes: dict[str, int]
    lat: dict[str, int]
    sum: float
    total: int
    errors: int
    client_errors: int
    abandoned: int
    started: int
    endpoints: dict[str, int]
    fine: dict[str, int]
    upstream_5xx: int
    upstream_4xx: int


class Tick:
    """Counts for one judge tick."""

    __slots__ = ("abandoned", "client_errors", "endpoints", "errors", "lat", "started", "total")

    def __init__(self, buckets: int) -> None:
        self.total = 0
        self.errors = 0
        self.client_errors = 0
        self.abandoned = 0
        self.started = 0
        self.endpoints: dict[str, int] = {}
        self.lat = [0] * buckets


class Window(Tick):
    """A sum of ticks: the same counts, and the latency histogram's `bounds`."""

    __slots__ = ("bounds",)

    def __init__(self, bounds: tuple[float, ...] = FINE_BOUNDS, ticks: Iterable[Tick] = ()) -> None:
        super().__init__(len(bounds) + 1)
        self.bounds = bounds
        for tick in ticks:
            self.add(tick)

    def add(self, tick: Tick) -> None:
        self.total += tick.total
        self.errors += tick.errors
        self.client_errors += tick.client_errors
        self.abandoned += tick.abandoned
        self.started += tick.started
        if tick.endpoints:
            endpoints = self.endpoints
            for key, n in tick.endpoints.items():
                endpoints[key] = endpoints.get(key, 0) + n
        lat = self.lat
        for i, n in enumerate(tick.lat):
            if n:
                lat[i] += n

    @property
    def error_rate(self) -> float:
        return self.errors / self.total if self.total else math.nan

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (NaN with no data)."""
        if not self.total:
            return math.nan
        rank = q * self.total
        seen = 0
        for i, n in enumerate(self.lat):
            seen += n
            if seen >= rank and n:
                return self.bounds[i] if i < len(self.bounds) else math.inf
        return math.inf


class SlotStats:
    """Everything measured for one slot in this process."""

    __slots__ = (
        "bounds",
        "by_code",
        "current",
        "first",
        "lat",
        "lat_sum",
        "odd_codes",
        "prometheus",
        "ring",
        "upstream_4xx",
        "upstream_5xx",
    )

    def __init__(self, prometheus: tuple[float, ...], ring_ticks: int = 480) -> None:
        self.prometheus = prometheus  # the exported histogram's bounds (le)
        self.bounds = latency_bounds(prometheus)
        # first[k]: bisect_left of the low edge of cell k, with half a cell to spare for rounding in
        # int(seconds * CELL); one more cell than CELLS, for a product that rounds up to CELLS.
        self.first = [bisect_left(self.bounds, (k - 0.5) / CELL) for k in range(CELLS + 1)]
        # Answers by status code: a list index per request, not a dict's get and set (`codes` reads them).
        self.by_code = [0] * CODES
        self.odd_codes: dict[int, int] = {}  # any code outside [0, CODES), which the data path does not give
        self.lat = [0] * (len(self.bounds) + 1)  # since start, over `bounds`, but the open tick's (latencies())
        self.lat_sum = 0.0
        self.current = Tick(len(self.lat))
        self.ring: deque[Tick] = deque(maxlen=ring_ticks)
        # Answers from the upstreams (not the proxy's own 502/503/504), since start.
        self.upstream_5xx = 0
        self.upstream_4xx = 0

    def record(self, code: int, seconds: float, own: bool = False) -> None:
        """One finished request (hot path). `own`: the proxy answered it (an error of its own)."""
        bounds = self.bounds
        if 0.0 <= seconds < CELLS / CELL:  # not NaN, not slow: the table, then the cell's few bounds
            i = self.first[int(seconds * CELL)]
            n = len(bounds)
            while i < n and bounds[i] < seconds:
                i += 1
        else:
            # bisect_left(bounds, seconds), compiled: the C bisect is a generic call that compares
            # boxed floats, three times the cost of this loop on unboxed ones.
            lo, hi = 0, len(bounds)
            while lo < hi:
                mid = (lo + hi) >> 1
                if bounds[mid] < seconds:
                    lo = mid + 1
                else:
                    hi = mid
            i = lo
        self.lat_sum += seconds
        if 0 <= code < CODES:
            by_code = self.by_code
            by_code[code] = by_code[code] + 1
        else:
            self.odd_codes[code] = self.odd_codes.get(code, 0) + 1
        tick = self.current
        tick.total += 1
        lat = tick.lat
        lat[i] = lat[i] + 1  # not `+=`: on a list item, mypyc compiles that to a generic add
        if code >= 400:
            if code >= 500:
                tick.errors += 1
                if not own:
                    self.upstream_5xx += 1
            elif code == 499:
                tick.abandoned += 1
            else:
                tick.client_errors += 1
                if not own:
                    self.upstream_4xx += 1

    @property
    def codes(self) -> dict[int, int]:
        """Answers by status code (the codes answered at least once)."""
        codes = {code: n for code, n in enumerate(self.by_code) if n}
        for code, n in self.odd_codes.items():
            codes[code] = codes.get(code, 0) + n
        return codes

    def failed_at(self, method: bytes, target: bytes) -> None:
        """A request that got a 5xx, by endpoint (called only for those: not per request)."""
        endpoints = self.current.endpoints
        key = endpoint_key(method, target)
        if key not in endpoints and len(endpoints) >= MAX_ENDPOINTS:
            key = OTHER_ENDPOINT
        endpoints[key] = endpoints.get(key, 0) + 1

    def prometheus_buckets(self) -> list[int]:
        """Counts per Prometheus bucket (not cumulative; the last is +Inf)."""
        out = [0] * (len(self.prometheus) + 1)
        j = 0
        for bound, n in zip((*self.bounds, math.inf), self.latencies(), strict=True):
            while j < len(self.prometheus) and bound > self.prometheus[j]:
                j += 1
            out[j] += n
        return out

    def latencies(self) -> list[int]:
        """Requests per latency bucket (over `bounds`, the last is +Inf) since start."""
        return [a + b for a, b in zip(self.lat, self.current.lat, strict=True)]

    def rotate(self) -> None:
        closed = self.current
        lat = self.lat
        for i, n in enumerate(closed.lat):
            if n:
                lat[i] += n
        self.ring.append(closed)
        self.current = Tick(len(lat))

    def window(self, ticks: int) -> Window:
        """The last `ticks` closed ticks plus the open one."""
        ring = self.ring
        count = min(ticks, len(ring))
        window = Window(self.bounds, (ring[len(ring) - i] for i in range(count, 0, -1)))
        window.add(self.current)
        return window

    # -- workers: a worker ships what it counted since the last report; the master adds it up ----

    def take(self) -> Report:
        """What was counted since the last call, as plain data; the counts restart from zero."""
        tick = self.current
        data: Report = {
            "codes": {str(k): v for k, v in self.codes.items()},
            "lat": {str(i): n for i, n in enumerate(self.latencies()) if n},
            "sum": self.lat_sum,
            "total": tick.total,
            "errors": tick.errors,
            "client_errors": tick.client_errors,
            "abandoned": tick.abandoned,
            "started": tick.started,
            "endpoints": dict(tick.endpoints),
            "fine": {str(i): n for i, n in enumerate(tick.lat) if n},
            "upstream_5xx": self.upstream_5xx,
            "upstream_4xx": self.upstream_4xx,
        }
        self.upstream_5xx = self.upstream_4xx = 0
        self.by_code = [0] * CODES
        self.odd_codes = {}
        self.lat = [0] * len(self.lat)
        self.lat_sum = 0.0
        self.current = Tick(len(self.lat))
        return data

    def merge(self, data: Report) -> None:
        """Add a worker's report (from `take`; same settings, so the same bounds) into these counts."""
        for key, n in data["codes"].items():
            code = int(key)
            if 0 <= code < CODES:
                self.by_code[code] += n
            else:
                self.odd_codes[code] = self.odd_codes.get(code, 0) + n
        # "lat" counts the worker's requests since its last report, "fine" those of them in its open
        # tick: those go into this open tick (added to `lat` when it closes), the others into `lat`.
        fine = data["fine"]
        for index, n in data["lat"].items():
            self.lat[int(index)] += n - fine.get(index, 0)
        self.lat_sum += data["sum"]
        self.upstream_5xx += data.get("upstream_5xx", 0)
        self.upstream_4xx += data.get("upstream_4xx", 0)
        tick = self.current
        tick.total += data["total"]
        tick.errors += data["errors"]
        tick.client_errors += data["client_errors"]
        tick.abandoned += data["abandoned"]
        tick.started += data["started"]
        for key, n in data["endpoints"].items():
            tick.endpoints[key] = tick.endpoints.get(key, 0) + n
        for index, n in data["fine"].items():
            tick.lat[int(index)] += n
