"""Prometheus metrics, collected at scrape time from the counters the data path keeps.

Nothing here runs per request: the data path adds to plain ints (proxy.routing.stats.SlotStats,
SlotRuntime.errors) and this collector turns them into metric families when /metrics is read.
Labels are bounded: slot names (two), status codes, error reasons, triggers, upstream URLs from
the config. Never a path, a client or a request id.

Where /metrics is served, always from the one registry of the process that holds the control side
(with worker processes, the master, whose counters add up every worker's reports):
- on the admin listener, behind its bearer tokens like every admin path but /v1/health and
  /openapi.json (a viewer token is enough: GET is a read);
- on `admin.metrics_listen`, if set: a listener of its own (`make_metrics_app`) serving only
  GET /metrics, with no token, as Prometheus scrape ports usually are. Any other path is a 404 and
  any other method a 405, with the admin API's JSON error body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from admin.api import Handler, as_api_error
from proxy import native
from proxy.release.control import Controller
from proxy.release.shadow_results import ShadowResults

TRIGGERS = ("api", "rollback", "judge", "alert", "reload", "ramp")
ROLLBACK_REASONS = ("api", "judge_error_rate", "judge_latency", "judge_baseline", "promql", "alert")
DRAIN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _version() -> str:
    try:
        return version("slotswitch")
    except PackageNotFoundError:
        return "dev"


def _histogram(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    cumulative = []
    total = 0
    for bound, n in zip(bounds, counts, strict=False):
        total += n
        cumulative.append((repr(float(bound)), float(total)))
    total += counts[len(bounds)]
    cumulative.append(("+Inf", float(total)))
    return cumulative


class SlotswitchCollector(Collector):
    def __init__(
        self,
        controller: Controller,
        extra: dict[str, float] | None = None,
        store_up: Callable[[], bool] | None = None,
        shadow: ShadowResults | None = None,
    ) -> None:
        self.controller = controller
        self.shadow = shadow
        self.extra = extra if extra is not None else {}
        self.store_up = store_up  # fleet mode: whether this replica reaches the shared store; None = local file

    def collect(self) -> Iterator[Metric]:
        snap = self.controller.store.current
        yield from self._traffic()
        weights = snap.weights()
        weight = GaugeMetricFamily(
            "slotswitch_slot_weight_ratio", "Share of new requests per slot (0-1).", labels=["slot"]
        )
        active = GaugeMetricFamily("slotswitch_slot_active", "1 for the active slot.", labels=["slot"])
        for name in snap.routes:
            weight.add_metric([name], weights[name] / 100.0)
            active.add_metric([name], 1.0 if name == snap.active else 0.0)
        yield weight
        yield active
        healthy = GaugeMetricFamily(
            "slotswitch_upstream_healthy",
            "1 when the upstream passes its checks and is not marked down.",
            labels=["slot", "upstream"],
        )
        for name, route in snap.routes.items():
            for pool in route.pools:
                healthy.add_metric([name, pool.url], 1.0 if pool.usable else 0.0)
        yield healthy
        yield from self._control(snap.generation)
        if self.shadow is not None:
            shadow = CounterMetricFamily(
                "slotswitch_shadow_requests",
                "Requests mirrored to the idle slot, by how its answer compared with the active slot's "
                "(dropped: not mirrored, shadow.max_in_flight reached; skipped: a body over shadow.max_body).",
                labels=["result"],
            )
            for result, n in self.shadow.counts().items():
                shadow.add_metric([result], float(n))
            yield shadow

    def _traffic(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "slotswitch_requests", "Requests answered, by slot and status code.", labels=["slot", "code"]
        )
        errors = CounterMetricFamily(
            "slotswitch_upstream_errors",
            "Upstream failures the proxy answered for, by reason.",
            labels=["slot", "reason"],
        )
        in_flight = GaugeMetricFamily("slotswitch_in_flight_requests", "Requests in flight.", labels=["slot"])
        duration = HistogramMetricFamily(
            "slotswitch_request_duration_seconds", "Time from routing to the end of the response.", labels=["slot"]
        )
        for name, rt in self.controller.registry.runtimes.items():
            for code, n in sorted(rt.stats.codes.items()):
                requests.add_metric([name, str(code)], float(n))
            for reason, n in sorted(rt.errors.items()):
                errors.add_metric([name, reason], float(n))
            in_flight.add_metric([name], float(rt.in_flight))
            stats = rt.stats
            duration.add_metric([name], _histogram(stats.prometheus, stats.prometheus_buckets()), stats.lat_sum)
        yield requests
        yield errors
        yield in_flight
        yield duration
        yield CounterMetricFamily(
            "slotswitch_access_log_dropped",
            "Access log lines dropped: the destination failed (a full disk, a closed stdout) or fell behind.",
            value=float(self.controller.server.access_log_dropped()),
        )

    def _control(self, generation: int) -> Iterator[Metric]:
        switches = CounterMetricFamily(
            "slotswitch_switches", "Routing changes of the active slot, by trigger.", labels=["trigger"]
        )
        # Known label values start at 0, so the first event shows in increase() (a series that
        # first appears at 1 does not).
        by_trigger = {t: 0 for t in TRIGGERS} | dict(self.controller.switches)
        for trigger, n in sorted(by_trigger.items()):
            switches.add_metric([trigger], float(n))
        yield switches
        rollbacks = CounterMetricFamily("slotswitch_rollbacks", "Rollbacks, by reason.", labels=["reason"])
        for reason, n in sorted(({r: 0 for r in ROLLBACK_REASONS} | dict(self.controller.rollbacks)).items()):
            rollbacks.add_metric([reason], float(n))
        yield rollbacks
        reloads = CounterMetricFamily("slotswitch_reloads", "Config reloads (SIGHUP), by result.", labels=["result"])
        for result, n in sorted(({"applied": 0, "refused": 0} | dict(self.controller.reloads)).items()):
            reloads.add_metric([result], float(n))
        yield reloads
        durations = self.controller.drainer.durations
        counts = [0] * (len(DRAIN_BUCKETS) + 1)
        for d in durations:
            counts[next((i for i, b in enumerate(DRAIN_BUCKETS) if d <= b), len(DRAIN_BUCKETS))] += 1
        drain = HistogramMetricFamily("slotswitch_drain_duration_seconds", "How long drains of a slot took.")
        drain.add_metric([], _histogram(DRAIN_BUCKETS, counts), float(sum(durations)))
        yield drain
        yield GaugeMetricFamily(
            "slotswitch_state_generation", "Generation of the routing state.", value=float(generation)
        )
        store_up = GaugeMetricFamily("slotswitch_state_store_up", "1 when the state store is reachable.")
        store_up.add_metric([], 0.0 if self.store_up is not None and not self.store_up() else 1.0)
        yield store_up
        expiry = GaugeMetricFamily(
            "slotswitch_tls_certificate_expiry_seconds",
            "Seconds until the listener's certificate expires (negative: expired), by its first name.",
            labels=["name"],
        )
        tls = self.controller.server.tls
        now = time.time()
        for cert in tls.expiries() if tls is not None else ():
            expiry.add_metric([cert.name], cert.not_after - now)
        yield expiry
        yield CounterMetricFamily(
            "slotswitch_tls_handshake_failures",
            "TLS handshakes on the traffic listener that failed (no shared protocol or cipher, bytes that are "
            "not TLS) or did not finish within timeouts.header_read.",
            value=float(tls.handshake_failures if tls is not None else 0),
        )
        info = GaugeMetricFamily(
            "slotswitch_build_info",
            "Build information; data_path is compiled (mypyc) or python.",
            labels=["version", "data_path"],
        )
        info.add_metric([_version(), native.mode], 1.0)
        yield info


def make_registry(
    controller: Controller, store_up: Callable[[], bool] | None = None, shadow: ShadowResults | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SlotswitchCollector(controller, store_up=store_up, shadow=shadow))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REGISTRY = web.AppKey("registry", CollectorRegistry)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The /metrics answer, the same on both listeners."""
    return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})


async def _get_metrics(request: web.Request) -> web.Response:
    return exposition(request.app[REGISTRY])


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:  # CancelledError is a BaseException: it passes through
        error = as_api_error(exc)
        if error is None:
            raise
        return error.response()


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The `admin.metrics_listen` listener: GET (and HEAD) /metrics only, no authentication."""
    app = web.Application(middlewares=[_json_errors])
    app[REGISTRY] = registry
    app.router.add_get("/metrics", _get_metrics, name="metrics")
    return app
