"""The configuration schema: one validator for the YAML file and for admin changes.

`load_settings(path)` and `parse_settings(mapping)` return a frozen `Settings` or raise
`ConfigError`, which carries *every* problem at once, each prefixed with its YAML path
(`slots.green.upstreams[0]: not a URL`). Fatal exits happen only at start-up; a reload
that raises keeps the running configuration.

The schema is in three modules: the value types (durations, sizes, addresses, upstream URLs) in
proxy/settings/types.py; the sections that judge a slot (health, gates, analysis, promql, alerts) in
proxy/settings/rollout.py; the other sections, the top level `Settings` and the loader here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from proxy.settings.errors import ConfigError as ConfigError
from proxy.settings.errors import cross_field, format_errors, merge, read_yaml
from proxy.settings.rollout import Alerts, Analysis, Gates, Health, PromQL
from proxy.settings.shadow import Shadow
from proxy.settings.tls import ListenerTLS, RedirectHTTP, UpstreamTLS
from proxy.settings.types import (
    SLOT_NAME,
    Bool,
    ConfigModel,
    Duration,
    Size,
    Upstream,
    check_listen,
    check_optional_listen,
    is_loopback,
    parse_listen,
)


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


class SlotConfig(ConfigModel):
    upstreams: Annotated[tuple[Annotated[Upstream, BeforeValidator(_upstream)], ...], BeforeValidator(_non_empty)]
    tls: UpstreamTLS = UpstreamTLS()  # for https:// upstreams

    @field_serializer("upstreams")
    def _urls(self, upstreams: tuple[Upstream, ...]) -> list[str]:
        return [u.url for u in upstreams]  # dumps as the config file writes it, so it parses back


class Limits(ConfigModel):
    request_line: Size = 8192
    headers: Size = 32768
    header_count: int = Field(default=100, ge=1, le=10_000)  # more request headers -> 431 (Envoy: 100)
    body: Size = 0  # 0 = no limit (the nginx default would be 1 MiB; a proxy in front of an app should not guess)
    buffer_body: Size = 1024 * 1024  # request_buffering: read and check this much body before an upstream is taken


def _on_off(value: object) -> object:
    # YAML 1.1 reads a bare `on` / `off` as a boolean.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


OnOff = Annotated[Literal["on", "off"], BeforeValidator(_on_off)]


class Timeouts(ConfigModel):
    header_read: Duration = 60.0
    body_read: Duration = 60.0
    body_total: Duration = 300.0  # the whole request body, from its head on; 0 = no limit
    keepalive: Duration = 75.0
    connect: Duration = 5.0
    upstream_read: Duration = 60.0


class Pool(ConfigModel):
    max_idle: int = Field(default=64, ge=0, le=100_000)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)


class TokenConfig(ConfigModel):
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


class AdminConfig(ConfigModel):
    listen: str = "127.0.0.1:9901"
    insecure_loopback: Bool = False  # with no token, serve on loopback only if this is true
    tokens: tuple[TokenConfig, ...] = ()
    audit_log: str = ""  # "" = next to the config file as <config>.audit.jsonl (none in-process)
    # "" = none; else host:port of a second listener serving only GET /metrics, with no token
    metrics_listen: str = ""
    # Serve the admin API and metrics_listen over TLS with the traffic listener's certificates (`tls`).
    tls: bool = False
    # Tokens on a non-loopback listener without TLS are refused unless this is true (then a WARNING is logged).
    allow_plaintext: bool = False

    _v_listen = field_validator("listen")(check_listen)
    _v_metrics_listen = field_validator("metrics_listen")(check_optional_listen)


class StateConfig(ConfigModel):
    """Where the routing state (active slot, upstreams, ramp, generation) is kept."""

    backend: Literal["file", "redis"] = "file"
    file: str = ""  # "" = next to the config file as <config>.state.json (none in-process)
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "slotswitch"
    poll_interval: Duration = 1.0
    fallback_to_config: Bool = False  # start from the config's state if the store is unreachable


class Sticky(ConfigModel):
    """How a client keeps its slot during a ramp: a hash of this key. A request without the key
    is placed on its own; with `set_cookie` (by cookie), the proxy then gives it the cookie, so its
    next requests keep the place it got."""

    by: Literal["ip", "cookie", "header", "none"] = "ip"
    name: str = ""
    set_cookie: bool = False

    @model_validator(mode="after")
    def _named(self) -> Sticky:
        if self.by in ("cookie", "header") and not self.name:
            raise ValueError(f"sticky.by {self.by} needs a name")
        if self.set_cookie and self.by != "cookie":
            raise ValueError("sticky.set_cookie needs sticky.by cookie")
        if self.by in ("cookie", "header") and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", self.name):
            raise ValueError(f"sticky.name: not a valid {self.by} name: {self.name!r}")
        return self


class Preview(ConfigModel):
    """Requests carrying this header or cookie with the secret go to the idle slot."""

    header: str = "X-Slotswitch-Preview"
    cookie: str = "slotswitch_preview"
    secret_env: str = "SLOTSWITCH_PREVIEW_SECRET"
    secret_file: str | None = None


def _access_log_shorthand(value: object) -> object:
    # `access_log: true` / `false`, the form from before the section existed, still reads.
    if isinstance(value, str):
        raise ValueError("expected true or false (not a string like 'yes'), or a mapping")
    return {"enabled": value} if isinstance(value, bool) else value


class AccessLogConfig(ConfigModel):
    """One line per request, nginx's access log: written in batches off the request path (every second or
    64 KiB, and at shutdown); SIGUSR1 reopens the file (logrotate's postrotate)."""

    enabled: Bool = False
    path: str = Field(default="-", min_length=1)
    format: Literal["json", "combined"] = "json"
    sample: float = Field(default=1.0, gt=0.0, le=1.0)

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\0" in value or value != value.strip():
            raise ValueError("not a usable file name")
        return value


class Metrics(ConfigModel):
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    @field_validator("buckets")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or list(value) != sorted(set(value)) or value[0] <= 0:
            raise ValueError("buckets must be positive and strictly ascending")
        return value


class Settings(ConfigModel):
    listen: str = "127.0.0.1:8080"
    tls: ListenerTLS = ListenerTLS()
    redirect_http: RedirectHTTP = RedirectHTTP()
    slots: dict[Annotated[str, StringConstraints(pattern=SLOT_NAME.pattern)], SlotConfig]
    active: str
    drain_timeout: Duration = 30.0
    workers: int = Field(default=0, ge=0, le=256)  # data-path processes; 0 = one per CPU
    slot_header: str = "X-Slotswitch-Slot"
    trusted_proxies: tuple[str, ...] = ()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    request_buffering: OnOff = "on"  # read (up to limits.buffer_body of) a body before taking an upstream
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
    shadow: Shadow = Shadow()
    access_log: Annotated[AccessLogConfig, BeforeValidator(_access_log_shorthand)] = AccessLogConfig()
    log_level: str = "info"

    _v_listen = field_validator("listen")(check_listen)

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
        if not self.tls.enabled and self.redirect_http.listen:
            raise ValueError("redirect_http: redirects to https need tls on the listener")
        if not self.tls.enabled and self.admin.tls:
            raise ValueError("admin.tls: serves the listener's certificates, so it needs tls")
        return self

    @property
    def listen_addr(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Validate a mapping (from YAML or from the admin API); raise ConfigError with all errors,
    field and cross-field ones together (proxy/settings/errors.py)."""
    if not isinstance(data, Mapping):
        raise ConfigError(["<root>: expected a mapping of settings"])
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        errors = format_errors(exc, Settings, SLOT_NAME.pattern)
    raise ConfigError(merge(errors, cross_field(data)))


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML file; every problem comes back in one ConfigError."""
    data = read_yaml(path)
    if data is None:
        data = {}
    return parse_settings(data)


def config_warnings(settings: Settings) -> list[str]:
    """Valid, but probably not what was meant: shown by `check-config`."""
    warnings = []
    admin = settings.admin
    if not admin.tokens:
        host = parse_listen(admin.listen)[0]
        if not is_loopback(host):
            warnings.append(
                f"admin.tokens: no token source is configured, so `run` refuses to serve the admin API on "
                f"{admin.listen}; add admin.tokens (token_env or token_file)"
            )
        elif not admin.insecure_loopback:
            warnings.append(
                "admin.tokens: no token source is configured; `run` needs admin.tokens, or "
                "admin.insecure_loopback: true for a loopback-only admin API without a token"
            )
    return warnings
