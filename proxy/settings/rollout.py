"""The config sections that decide whether a slot may take or keep traffic: health checks (`health`),
switch gates (`gates`), the rollback judge's policy (`analysis`), PromQL checks (`promql`) and the
Alertmanager webhook (`alerts`). `Settings` in proxy/settings/model.py holds one of each.

Field comments here are the descriptions docs/config-reference.md shows (tools/gen_config_reference.py).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from proxy.settings.shadow import ShadowGate
from proxy.settings.types import Bool, ConfigModel, Duration, parse_duration


def _bake(value: object) -> float:
    """A duration, or `forever` (math.inf): how long a new active slot stays under judgement."""
    if isinstance(value, str) and value.strip().lower() == "forever":
        return math.inf
    return parse_duration(value)


BakeTime = Annotated[float, BeforeValidator(_bake)]
# Keys of the judge before its anytime-valid tests, and what replaced them.
_REMOVED_ANALYSIS = {
    "failure_limit": "every test is anytime-valid, so one failing verdict rolls back: tune `false_rollback_rate`",
    "significance": "use `false_rollback_rate` (one error budget for the whole release)",
    "window": "evidence accumulates over the whole ramp and bake; PromQL checks take `promql.window`",
    "latency_tolerance": "use `latency_margin` (relative) and `latency_margin_min` (absolute)",
    "latency_min_delta": "use `latency_margin_min`",
    "watch_after_switch": "renamed `bake_time`",
}


class Analysis(ConfigModel):
    """The rollback judge's policy: anytime-valid comparisons with the stable slot, and absolute limits."""

    false_rollback_rate: float = Field(default=0.01, gt=0.0, le=0.2)  # chance of rolling back a healthy release
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)  # absolute limit on failures (5xx, hung, 499)
    max_p99: Duration = 2.0  # absolute limit on p99, applied from 1000 candidate requests on
    min_requests: int = Field(default=50, ge=1)  # candidate requests in a ramp step before it may pass
    compare_to_baseline: Bool = True  # off: absolute limits only
    bake_time: BakeTime = 600.0  # judged after a switch or a ramp's last step: a duration, 0 or `forever`
    baseline_window: Duration = 300.0  # the old slot's traffic before a switch that the new slot is compared with
    max_inconclusive: Duration = 300.0  # a step or bake inconclusive this long takes `on_inconclusive`
    on_inconclusive: Literal["hold", "rollback"] = "hold"  # hold (and alert) or roll back
    error_ratio: float = Field(default=1.25, ge=1.0)  # a failure or 4xx rate up to this times the baseline's ...
    error_margin: float = Field(default=0.001, ge=0.0, le=0.5)  # ... plus this is not a regression
    latency_margin: float = Field(default=0.25, ge=0.0)  # slower by this fraction of a baseline quantile ...
    latency_margin_min: Duration = 0.010  # ... and by at least this much counts as slower
    hang_floor: Duration = 1.0  # a request in flight longer than max(this, 5 x baseline p99) counts as failed
    max_hang: Duration = 10.0  # ... and never later than this
    tick: Duration = 0.25  # how often the judge looks (its tests stay valid however often)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            gone = [f"`{key}` was removed: {why}" for key, why in _REMOVED_ANALYSIS.items() if key in data]
            if gone:
                raise ValueError("; ".join(gone))
        return data

    @model_validator(mode="after")
    def _hang(self) -> Analysis:
        if self.hang_floor > self.max_hang:
            raise ValueError("hang_floor must not exceed max_hang")
        if self.tick <= 0:
            raise ValueError("tick must be positive")
        return self


class Check(ConfigModel):
    """One active health check of an upstream."""

    path: str = "/health"
    method: str = "GET"
    expect_status: tuple[int, ...] = (200,)
    body_contains: str | None = None
    json_field: str | None = None  # dotted path into a JSON body, e.g. "status" or "db.ok"
    json_equals: Any = None
    latency_budget: Duration = 1.0

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a check path starts with /")
        return value

    @field_validator("expect_status", mode="before")
    @classmethod
    def _statuses(cls, value: object) -> object:
        return (value,) if isinstance(value, int) else value


class Health(ConfigModel):
    """Active checks (HAProxy-like inter/rise/fall) and passive marking-down from live traffic."""

    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=2, ge=1)
    checks: dict[str, tuple[Check, ...]] = {}  # per slot name; a slot without any gets a TCP connect check
    passive_connect_failures: int = Field(default=1, ge=1)
    passive_5xx: int = Field(default=5, ge=1)
    passive_backoff: Duration = 10.0
    failover: Bool = False  # send traffic to the other slot when the whole active slot is down
    gate: Bool = True  # refuse a switch or ramp to a slot whose checks do not all pass (unless forced)


class Migrations(ConfigModel):
    files: tuple[str, ...] = ()  # registered migration files: while any has findings, a switch is refused
    dialect: str | None = None


class Warmup(ConfigModel):
    requests: int = Field(default=0, ge=0, le=100_000)  # 0 = no warm-up
    paths: tuple[str, ...] = ()  # also recently seen GET paths, when record_recent is on
    record_recent: int = Field(default=0, ge=0, le=10_000)  # how many recent GET targets to keep


class Gates(ConfigModel):
    """Checks before a switch or ramp step, besides health (see proxy/release/gates.py)."""

    smoke: tuple[Check, ...] = ()
    warmup: Warmup = Warmup()
    migrations: Migrations = Migrations()
    shadow: ShadowGate | None = None  # refuse a slot whose shadowed answers differ (off unless set)


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class PromQLCheck(ConfigModel):
    """One PromQL query judged against [min, max]; `{{slot}}` and `{{window}}` are filled in."""

    name: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None

    @field_validator("query")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        unknown = sorted({m for m in _PLACEHOLDER.findall(value) if m not in ("slot", "window")})
        if unknown:
            raise ValueError(f"unknown placeholder {', '.join(unknown)} (known: {{{{slot}}}}, {{{{window}}}})")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> PromQLCheck:
        if self.min is None and self.max is None:
            raise ValueError("set min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class PromQL(ConfigModel):
    """Optional checks against an external Prometheus, polled during ramps and watch windows."""

    url: str = "http://127.0.0.1:9090"
    window: Duration = Field(default=30.0, gt=0)  # the range a check's query covers ({{window}})
    interval: Duration = Field(default=5.0, gt=0)
    timeout: Duration = Field(default=2.0, gt=0)
    failure_limit: int = Field(default=2, ge=1)  # failing results in a row that roll back (fixed thresholds)
    checks: tuple[PromQLCheck, ...] = ()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL like http://127.0.0.1:9090, got {value!r}")
        return value.rstrip("/")

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: tuple[PromQLCheck, ...]) -> tuple[PromQLCheck, ...]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("check names must be unique")
        return value


class Alerts(ConfigModel):
    """The Alertmanager webhook (POST /v1/alerts): which firing alerts roll back."""

    rollback_label: str = Field(default="slotswitch_rollback", min_length=1)
    rollback_value: str = "true"
    dedupe_ttl: Duration = 24 * 3600.0  # how long an alert (fingerprint + startsAt) that acted is remembered
    dedupe_size: int = Field(default=4096, ge=1, le=1_000_000)
