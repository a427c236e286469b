"""The configuration schema: one validator for the YAML file and for admin changes.

`load_settings(path)` and `parse_settings(mapping)` return a frozen `Settings` or raise
`ConfigError`, which carries *every* problem at once, each prefixed with its YAML path
(`slots.green.upstreams[0]: not a URL`). Fatal exits happen only at start-up; a reload
that raises keeps the running configuration.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|kb|mb|gb)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
SLOT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ConfigError(ValueError):
    """Every problem found in one configuration, each as `path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_duration(value: object) -> float:
    """`250ms`, `30s`, `2m`, `1h` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 30s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 30s or 2m, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """`8192`, `8KiB`, `1MiB` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 8192, 8KiB or 1MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _UNIT_BYTES[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"expected a size like 8192, 8KiB or 1MiB, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _check_optional_listen(value: str) -> str:
    return _check_listen(value) if value else value


class Upstream(_Model):
    """One upstream URL of a slot: http://host:port with no path."""

    url: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a URL of the form http://host:port: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"an upstream URL has no path or query: {url!r}")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}") from exc
        return cls(url=f"http://{parts.netloc}", host=parts.hostname, port=port)


def _upstream(value: object) -> object:
    if isinstance(value, Upstream):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string like http://127.0.0.1:5001, got {type(value).__name__}")
    return Upstream.from_url(value)


def _non_empty(value: object) -> object:
    # Checked before the items, so one bad URL is one error and not also "too few items".
    if isinstance(value, list | tuple) and not value:
        raise ValueError("at least one upstream URL is needed")
    return value


class SlotConfig(_Model):
    upstreams: Annotated[tuple[Annotated[Upstream, BeforeValidator(_upstream)], ...], BeforeValidator(_non_empty)]

    @field_serializer("upstreams")
    def _urls(self, upstreams: tuple[Upstream, ...]) -> list[str]:
        return [u.url for u in upstreams]  # dumps as the config file writes it, so it parses back


class Limits(_Model):
    request_line: Size = 8192
    headers: Size = 32768
    body: Size = 0  # 0 = no limit (the nginx default would be 1 MiB; a proxy in front of an app should not guess)


class Timeouts(_Model):
    header_read: Duration = 60.0
    body_read: Duration = 60.0
    keepalive: Duration = 75.0
    connect: Duration = 5.0
    upstream_read: Duration = 60.0


class Pool(_Model):
    max_idle: int = Field(default=64, ge=0, le=100_000)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)


class TokenConfig(_Model):
    """An admin API token: its secret comes from an env var or a file, never from this file."""

    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator"] = "operator"
    token_env: str | None = None
    token_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("set exactly one of token_env or token_file")
        return self


class AdminConfig(_Model):
    listen: str = "127.0.0.1:9901"
    insecure_loopback: bool = False  # with no token, serve on loopback only if this is true
    tokens: tuple[TokenConfig, ...] = ()
    audit_log: str = ""  # "" = next to the config file as <config>.audit.jsonl (none in-process)
    # "" = none; else host:port of a second listener serving only GET /metrics, with no token
    metrics_listen: str = ""

    _v_listen = field_validator("listen")(_check_listen)
    _v_metrics_listen = field_validator("metrics_listen")(_check_optional_listen)


class StateConfig(_Model):
    """Where the routing state (active slot, upstreams, ramp, generation) is kept."""

    backend: Literal["file", "redis"] = "file"
    file: str = ""  # "" = next to the config file as <config>.state.json (none in-process)
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "slotswitch"
    poll_interval: Duration = 1.0
    fallback_to_config: bool = False  # start from the config's state if the store is unreachable


class Sticky(_Model):
    """How a client keeps its slot during a ramp: a hash of this key. A request without the key
    is placed on its own."""

    by: Literal["ip", "cookie", "header", "none"] = "ip"
    name: str = ""

    @model_validator(mode="after")
    def _named(self) -> Sticky:
        if self.by in ("cookie", "header") and not self.name:
            raise ValueError(f"sticky.by {self.by} needs a name")
        return self


class Preview(_Model):
    """Requests carrying this header or cookie with the secret go to the idle slot."""

    header: str = "X-Slotswitch-Preview"
    cookie: str = "slotswitch_preview"
    secret_env: str = "SLOTSWITCH_PREVIEW_SECRET"
    secret_file: str | None = None


class Analysis(_Model):
    """The rollback judge's policy: absolute guardrails and a comparison with the other slot."""

    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99: Duration = 2.0
    min_requests: int = Field(default=50, ge=1)
    window: Duration = 5.0
    failure_limit: int = Field(default=2, ge=1)
    compare_to_baseline: bool = True
    watch_after_switch: Duration = 60.0
    tick: Duration = 0.25
    significance: float = Field(default=0.01, gt=0.0, lt=0.5)
    latency_tolerance: float = Field(default=1.5, ge=1.0)  # candidate p99 may be this many times the baseline's
    latency_min_delta: Duration = 0.05  # ... and must also be this much slower to count (cold pools add ms)


class Check(_Model):
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


class Health(_Model):
    """Active checks (HAProxy-like inter/rise/fall) and passive marking-down from live traffic."""

    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: int = Field(default=2, ge=1)
    fall: int = Field(default=2, ge=1)
    checks: dict[str, tuple[Check, ...]] = {}  # per slot name; a slot without any gets a TCP connect check
    passive_connect_failures: int = Field(default=1, ge=1)
    passive_5xx: int = Field(default=5, ge=1)
    passive_backoff: Duration = 10.0
    failover: bool = False  # send traffic to the other slot when the whole active slot is down
    gate: bool = True  # refuse a switch or ramp to a slot whose checks do not all pass (unless forced)


class Migrations(_Model):
    files: tuple[str, ...] = ()  # registered migration files: while any has findings, a switch is refused
    dialect: str | None = None


class Warmup(_Model):
    requests: int = Field(default=0, ge=0, le=100_000)  # 0 = no warm-up
    paths: tuple[str, ...] = ()  # also recently seen GET paths, when record_recent is on
    record_recent: int = Field(default=0, ge=0, le=10_000)  # how many recent GET targets to keep


class Gates(_Model):
    """Checks before a switch or ramp step, besides health (see proxy/gates.py)."""

    smoke: tuple[Check, ...] = ()
    warmup: Warmup = Warmup()
    migrations: Migrations = Migrations()


class Metrics(_Model):
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    @field_validator("buckets")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or list(value) != sorted(set(value)) or value[0] <= 0:
            raise ValueError("buckets must be positive and strictly ascending")
        return value


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class PromQLCheck(_Model):
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


class PromQL(_Model):
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


class Alerts(_Model):
    """The Alertmanager webhook (POST /v1/alerts): which firing alerts roll back."""

    rollback_label: str = Field(default="slotswitch_rollback", min_length=1)
    rollback_value: str = "true"
    dedupe_ttl: Duration = 24 * 3600.0  # how long an alert (fingerprint + startsAt) that acted is remembered
    dedupe_size: int = Field(default=4096, ge=1, le=1_000_000)


class Settings(_Model):
    listen: str = "127.0.0.1:8080"
    slots: dict[Annotated[str, StringConstraints(pattern=SLOT_NAME.pattern)], SlotConfig]
    active: str
    drain_timeout: Duration = 30.0
    workers: int = Field(default=0, ge=0, le=256)  # data-path processes; 0 = one per CPU
    slot_header: str = "X-Slotswitch-Slot"
    trusted_proxies: tuple[str, ...] = ()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()
    admin: AdminConfig = AdminConfig()
    state: StateConfig = StateConfig()
    sticky: Sticky = Sticky()
    preview: Preview = Preview()
    analysis: Analysis = Analysis()
    health: Health = Health()
    gates: Gates = Gates()
    metrics: Metrics = Metrics()
    promql: PromQL = PromQL()
    alerts: Alerts = Alerts()
    access_log: bool = False
    log_level: str = "info"

    _v_listen = field_validator("listen")(_check_listen)

    @field_validator("slots")
    @classmethod
    def _two_slots(cls, slots: dict[str, SlotConfig]) -> dict[str, SlotConfig]:
        if len(slots) != 2:
            raise ValueError(f"exactly two slots are needed (e.g. blue and green), got {len(slots)}")
        return slots

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or CIDR: {item!r}") from exc
        return value

    @field_validator("slot_header")
    @classmethod
    def _token(cls, value: str) -> str:
        if value and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
            raise ValueError(f"not a valid header name: {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @model_validator(mode="after")
    def _active_is_a_slot(self) -> Settings:
        if self.slots and len(self.slots) == 2 and self.active not in self.slots:
            raise ValueError(f"active: {self.active!r} is not a slot (slots: {', '.join(self.slots)})")
        unknown = [name for name in self.health.checks if name not in self.slots]
        if unknown:
            raise ValueError(f"health.checks: no slot named {', '.join(map(repr, unknown))}")
        return self

    @property
    def listen_addr(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _format_errors(exc: ValidationError) -> list[str]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required"
        elif err["type"] == "string_pattern_mismatch" and "[key]" in loc:
            msg = f"slot names must match {SLOT_NAME.pattern}"
            loc = tuple(p for p in loc if p != "[key]")
        path = _format_loc(loc)
        if not path and msg.startswith("active: "):  # model-level check that names its own path
            errors.append(msg)
        else:
            errors.append(f"{path or '<root>'}: {msg}")
    return errors


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Validate a mapping (from YAML or from the admin API); raise ConfigError with all errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(["<root>: expected a mapping of settings"])
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        errors = _format_errors(exc)
    # Cross-field checks run in pydantic only when every field is valid; run them here too so
    # that one pass reports every error.
    slots, active = data.get("slots"), data.get("active")
    if isinstance(slots, Mapping) and isinstance(active, str) and len(slots) == 2 and active not in slots:
        message = f"active: {active!r} is not a slot (slots: {', '.join(map(str, slots))})"
        if message not in errors:
            errors.append(message)
    raise ConfigError(errors)


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML file; every problem comes back in one ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    return parse_settings(data)
