"""Optional PromQL checks against an external Prometheus, judged the way Flagger judges them.

The poller runs only while there is a candidate to judge (a ramp's target, or the new active slot
during the watch window after a switch; `Analyzer.candidate` says which). Every `promql.interval`
it runs each check of `promql.checks` with `{{slot}}` and `{{window}}` filled in, and hands one
`PromQLVerdict` to the analyzer, which judges it with its own verdict (proxy.release.analysis).

Outcomes per check:
- a value inside [min, max]: pass;
- a value outside: fail;
- an empty result or NaN (NoData): inconclusive, never a pass;
- a query error, an HTTP error or a timeout (QueryError): inconclusive, and logged.

`PromQLClient.query(q) -> float` is the one network call; it raises NoData or QueryError.
`HttpPromQLClient` speaks Prometheus's `GET /api/v1/query`; a vector must hold one series
(aggregate with sum() or max()): several are an error, not a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from proxy.routing.state import Snapshot, Store
from proxy.settings.rollout import PromQLCheck

log = logging.getLogger("slotswitch.promql")

Outcome = Literal["pass", "fail", "inconclusive"]
_PLACEHOLDER = re.compile(r"\{\{\s*(slot|window)\s*\}\}")


class NoData(Exception):
    """The query returned no series, or NaN."""


class QueryError(Exception):
    """Prometheus could not answer the query (bad query, HTTP error, timeout, unreachable)."""


class PromQLClient(Protocol):
    async def query(self, q: str) -> float: ...


def promql_duration(seconds: float) -> str:
    """Seconds as a PromQL duration: 5.0 -> "5s", 60 -> "1m", 0.25 -> "250ms", 90 -> "90s"."""
    ms = max(1, round(seconds * 1000))
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def render(query: str, slot: str, window: float) -> str:
    """Fill in `{{slot}}` and `{{window}}` (spaces inside the braces allowed)."""
    values = {"slot": slot, "window": promql_duration(window)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], query)


def _sample(value: Any) -> float:
    """[timestamp, "1.5"] -> 1.5; NaN -> NoData."""
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
        raise QueryError(f"unexpected sample {value!r}")
    try:
        number = float(value[1])
    except ValueError:
        raise QueryError(f"not a number: {value[1]!r}") from None
    if math.isnan(number):
        raise NoData("the query returned NaN")
    return number


def parse_response(body: Any) -> float:
    """The one value of a /api/v1/query answer (already decoded from JSON)."""
    if not isinstance(body, dict):
        raise QueryError("the answer is not a JSON object")
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', 'no error message')}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise QueryError("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _sample(result)
    if kind != "vector" or not isinstance(result, list):
        raise QueryError(f"expected an instant vector or a scalar, got {kind}")
    if not result:
        raise NoData("the query returned no series")
    if len(result) > 1:
        raise QueryError(f"the query returned {len(result)} series: aggregate it to one (e.g. with sum())")
    series = result[0]
    if not isinstance(series, dict):
        raise QueryError("unexpected series")
    return _sample(series.get("value"))


class HttpPromQLClient:
    """`GET {url}/api/v1/query?query=...` with a timeout; Prometheus's HTTP API v1."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/api/v1/query"
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def query(self, q: str) -> float:
        try:
            async with self.session.get(self.url, params={"query": q}, timeout=self.timeout) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise QueryError(f"Prometheus at {self.url} did not answer: {exc!r}") from None
        try:
            body = json.loads(text)
        except ValueError:
            raise QueryError(f"HTTP {status}: {text[:200]!r}") from None
        return parse_response(body)


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    outcome: Outcome
    query: str
    value: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PromQLVerdict:
    """Every check's result for one slot, from one poll that started at `started`."""

    seq: int
    slot: str
    started: float
    results: tuple[CheckResult, ...]

    @property
    def outcome(self) -> Outcome:
        outcomes = {r.outcome for r in self.results}
        if "fail" in outcomes:
            return "fail"
        return "inconclusive" if "inconclusive" in outcomes else "pass"

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"promql {r.name}: {r.reason}" for r in self.results if r.outcome != "pass")

    def numbers(self) -> dict[str, float]:
        return {f"promql_{r.name}": r.value for r in self.results if r.value is not None}

    def as_json(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "at": self.started,
            "outcome": self.outcome,
            "checks": [
                {"name": r.name, "outcome": r.outcome, "value": r.value, "reason": r.reason or None}
                for r in self.results
            ],
        }


def judge_value(check: PromQLCheck, value: float) -> CheckResult | None:
    """A failing result when `value` is outside [min, max]; None when it is inside."""
    if check.min is not None and value < check.min:
        return CheckResult(check.name, "fail", "", value, f"{value:g} < min {check.min:g}")
    if check.max is not None and value > check.max:
        return CheckResult(check.name, "fail", "", value, f"{value:g} > max {check.max:g}")
    return None


async def run_check(client: PromQLClient, check: PromQLCheck, slot: str, window: float) -> CheckResult:
    query = render(check.query, slot, window)
    try:
        value = await client.query(query)
    except NoData as exc:
        return CheckResult(check.name, "inconclusive", query, None, f"no data ({exc})")
    except QueryError as exc:
        log.warning("PromQL check %s failed to run (inconclusive): %s; query: %s", check.name, exc, query)
        return CheckResult(check.name, "inconclusive", query, None, f"query error: {exc}")
    failed = judge_value(check, value)
    if failed is not None:
        return CheckResult(check.name, "fail", query, value, failed.reason)
    return CheckResult(check.name, "pass", query, value)


class PromQLPoller:
    """Polls the checks while `candidate()` names a slot; hands each verdict to `sink`.

    `client` is for tests that bring their own PromQLClient; by default an HttpPromQLClient on
    `promql.url` is used, with one keep-alive session that `stop()` closes."""

    def __init__(
        self,
        store: Store,
        candidate: Callable[[], str | None],
        sink: Callable[[PromQLVerdict], None],
        client: PromQLClient | None = None,
    ) -> None:
        self.store = store
        self.candidate = candidate
        self.sink = sink
        self.client = client
        self.seq = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        store.subscribe(self._on_publish)

    def _on_publish(self, old: Snapshot, new: Snapshot) -> None:
        if new.action in ("ramp", "switch") and new.settings.promql.checks:
            self._wake.set()  # a new candidate: poll now rather than at the next interval

    def _client(self, snap: Snapshot) -> PromQLClient:
        if self.client is not None:
            return self.client
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
        return HttpPromQLClient(self._session, snap.settings.promql.url, snap.settings.promql.timeout)

    async def poll_once(self) -> PromQLVerdict | None:
        """Run every check once for the current candidate; None when there is nothing to judge."""
        snap = self.store.current
        policy = snap.settings.promql
        slot = self.candidate()
        if not policy.checks or slot is None:
            return None
        client = self._client(snap)
        started = time.time()
        window = policy.window
        results = await asyncio.gather(*(self._bounded(client, c, slot, window, policy.timeout) for c in policy.checks))
        self.seq += 1
        verdict = PromQLVerdict(self.seq, slot, started, tuple(results))
        self.sink(verdict)
        return verdict

    @staticmethod
    async def _bounded(
        client: PromQLClient, check: PromQLCheck, slot: str, window: float, timeout: float
    ) -> CheckResult:
        try:
            return await asyncio.wait_for(run_check(client, check, slot, window), timeout)
        except TimeoutError:
            log.warning("PromQL check %s timed out after %.1fs (inconclusive)", check.name, timeout)
            return CheckResult(check.name, "inconclusive", render(check.query, slot, window), None, "timed out")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("PromQL poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.store.current.settings.promql.interval)
            self._wake.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
