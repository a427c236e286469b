"""The value types of the configuration schema (proxy/settings/model.py): durations, sizes, listen addresses,
slot names, upstream URLs, and the frozen base model every config section derives from.

Each parser accepts what a YAML file or the admin API may hold and raises ValueError with a message
meant for the user; pydantic turns that into one `path: message` line of a ConfigError.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|kb|mb|gb)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
SLOT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


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


# true or false only: YAML 1.1 words ("yes", "on") and strings ("true") are errors, not booleans.
Bool = Annotated[bool, Strict()]
# tools/gen_config_reference.py recognises these two by their validator functions (duration, size).
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are errors, and a parsed config never changes."""

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


def check_listen(value: str) -> str:
    """A field validator: `value` unchanged if it is a valid host:port."""
    parse_listen(value)
    return value


def check_optional_listen(value: str) -> str:
    """A field validator: "" (none) or a valid host:port."""
    return check_listen(value) if value else value


class Upstream(ConfigModel):
    """One upstream URL of a slot: http://host:port or https://host:port (TLS, see slots.<name>.tls), no path."""

    url: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a URL of the form http://host:port or https://host:port: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"an upstream URL has no path or query: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}") from exc
        return cls(url=f"{parts.scheme}://{parts.netloc}", host=parts.hostname, port=port)

    @property
    def https(self) -> bool:
        return self.url.startswith("https://")
