"""The config sections that decide whether a slot may take or keep traffic: health checks (`health`),
switch gates (`gates`), the rollback judge's policy (`analysis`), PromQL checks (`promql`) and the
Alertmanager webhook (`alerts`). `Settings` in proxy/settings/model.py holds one of each.

Field comments here are the descriptions docs/config-reference.md shows (tools/gen_config_reference.py).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from proxy.settings.types import Bool, ConfigModel, Duration


class Analysis(ConfigModel):
    """The rollback judge's policy: absolute guardrails and a comparison with the other slot."""

    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99: Duration = 2.0
    min_requests: int = Field(default=50, ge=1)
    window: Duration = 5.0
    failure_limit: int = Field(default=2, ge=1)
    compare_to_baseline: Bool = True
    watch_after_switch: Duration = 60.0
    tick: Duration = 0.25
    significance: float = Field(default=0.01, gt=0.0, lt=0.5)
    latency_tolerance: float = Field(default=1.5, ge=1.0)  # candidate p99 may be this many times the baseline's
    latency_min_delta: Duration = 0.05  # ... and must also be this much slower to count (cold pools add ms)


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
    interval: Duration = Field(default=5.0, gt=0)
    timeout: Duration = Field(default=2.0, gt=0)
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
