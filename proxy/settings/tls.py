"""The TLS sections of the configuration schema: the traffic listener's certificates (`tls`), the
plain listener that redirects to https (`redirect_http`), and a slot's upstream TLS (`slots.<name>.tls`).

Only shapes are checked here (paths are strings, names are host names): whether the files exist and
hold a matching certificate and key is checked when they are loaded (proxy/datapath/tls.py), at
start-up and at every SIGHUP, where a bad pair is refused and the running one kept. Relative paths
resolve against the config file's directory (proxy/settings/paths.py).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from proxy.settings.types import ConfigModel, Duration, check_optional_listen

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


class CertPair(ConfigModel):
    """A certificate chain (PEM, the leaf first) and its private key (PEM)."""

    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


class Hsts(ConfigModel):
    """The Strict-Transport-Security header added to every response on the TLS listener."""

    max_age: Duration = 0.0  # 0 = no header; browsers use only https for this long (e.g. 8760h, a year)
    include_subdomains: bool = False
    preload: bool = False

    def header(self) -> bytes:
        """The header line, or b"" when max_age is 0."""
        if self.max_age <= 0:
            return b""
        value = f"max-age={int(self.max_age)}"
        if self.include_subdomains:
            value += "; includeSubDomains"
        if self.preload:
            value += "; preload"
        return f"Strict-Transport-Security: {value}\r\n".encode("latin-1")


class ListenerTLS(ConfigModel):
    """TLS termination on the traffic listener: TLS 1.2 and 1.3, Mozilla's "intermediate" ciphers, ALPN
    http/1.1, session tickets. On when `cert` and `key` or `certificates` are set (chosen by SNI, the
    first as the default; with both, `cert`/`key` is the default and comes first)."""

    cert: str = ""  # "" (and no certificates) = plain HTTP on `listen`
    key: str = ""
    certificates: tuple[CertPair, ...] = ()
    hsts: Hsts = Hsts()
    # How often the session ticket keys rotate (a ticket stays valid for two periods); 0 = never.
    ticket_key_rotation: Duration = 43200.0

    @model_validator(mode="after")
    def _pair(self) -> ListenerTLS:
        if bool(self.cert) != bool(self.key):
            raise ValueError("set both cert and key, or neither (and use tls.certificates)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.certificates)

    def pairs(self) -> tuple[CertPair, ...]:
        """Every pair, the default first."""
        first = (CertPair(cert=self.cert, key=self.key),) if self.cert else ()
        return first + self.certificates


class RedirectHTTP(ConfigModel):
    """A plain-HTTP listener that answers 308 to the https URL, except for the ACME http-01 challenge
    path, which is forwarded to the active slot (certbot's webroot or standalone flow behind it)."""

    listen: str = ""  # "" = no redirect listener; else host:port, e.g. 0.0.0.0:80
    acme_prefix: str = "/.well-known/acme-challenge/"  # "" = redirect everything

    _v_listen = field_validator("listen")(check_optional_listen)

    @field_validator("acme_prefix")
    @classmethod
    def _path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("an ACME challenge prefix is a path starting with /")
        if any(c in value for c in " \r\n\t?#"):
            raise ValueError("an ACME challenge prefix is a plain path (no spaces, ? or #)")
        return value


class UpstreamTLS(ConfigModel):
    """TLS to this slot's https:// upstreams (and their health checks): verified against the system
    trust store, or `ca`; `server_name` is the SNI name and the name checked (default: the URL's host);
    `cert` and `key` are a client certificate for mutual TLS."""

    ca: str = ""
    server_name: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True  # false: no certificate check at all (a test network only; logged as a WARNING)

    @field_validator("server_name")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if value and not _HOSTNAME.match(value):
            raise ValueError(f"not a host name: {value!r}")
        return value

    @model_validator(mode="after")
    def _client_pair(self) -> UpstreamTLS:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs both cert and key")
        return self
