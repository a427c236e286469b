"""The `shadow:` section (traffic mirrored to the idle slot and the answers compared) and the
`gates.shadow` gate that reads the comparison before a switch or ramp.

Field comments here are the descriptions docs/config-reference.md shows (tools/gen_config_reference.py).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from proxy.settings.types import ConfigModel, Duration, Size

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# $, then .name / ['name'] / [3] / [*] steps (a name: letters, digits, _ and -)
_JSON_PATH = re.compile(r"^\$((\.[A-Za-z0-9_-]+)|(\[(\*|[0-9]+|'[^']*')\]))*$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class Shadow(ConfigModel):
    """Mirror a share of requests to the idle slot and compare its answers with the active slot's (off by default)."""

    percent: float = Field(
        default=0.0, ge=0.0, le=100.0
    )  # share of eligible requests also sent to the idle slot; 0 = off
    methods: tuple[str, ...] = ("GET", "HEAD")  # only these are mirrored; unsafe methods only when listed
    max_in_flight: int = Field(default=64, ge=1, le=10_000)  # mirrors at once; past it one is dropped, never queued
    max_body: Size = 256 * 1024  # request or response bodies larger than this are not compared (skipped)
    timeout: Duration = Field(default=10.0, gt=0)  # a mirrored request taking longer is an error
    ignore_headers: tuple[str, ...] = ("date", "x-request-id", "set-cookie", "etag")  # response headers not compared
    ignore_json_paths: tuple[str, ...] = ()  # JSON paths not compared, e.g. $.generated_at, $.items[*].updated_at
    noise_samples: int = Field(default=5, ge=0, le=1000)  # per endpoint: requests also sent twice to the active slot
    samples: int = Field(default=5, ge=0, le=100)  # differing request/response pairs kept per endpoint
    max_endpoints: int = Field(default=200, ge=1, le=10_000)  # endpoints tracked; the rest count as one

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in value if not _TOKEN.match(m)]
        if bad:
            raise ValueError(f"not HTTP method names: {', '.join(map(repr, bad))}")
        upper = tuple(dict.fromkeys(m.upper() for m in value))
        if "CONNECT" in upper:
            raise ValueError("CONNECT cannot be mirrored")
        return upper

    @field_validator("ignore_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in value if not _TOKEN.match(h)]
        if bad:
            raise ValueError(f"not header names: {', '.join(map(repr, bad))}")
        return tuple(h.lower() for h in value)

    @field_validator("ignore_json_paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _JSON_PATH.match(p)]
        if bad:
            raise ValueError(f"not JSON paths like $.a.b or $.items[*].id: {', '.join(map(repr, bad))}")
        return value


class ShadowGate(ConfigModel):
    """Refuse a switch or ramp to a slot whose shadowed answers differ too often (see the shadow section)."""

    max_diff_rate: float = Field(default=0.01, ge=0.0, le=1.0)  # per endpoint: differing / compared answers
    min_samples: int = Field(default=200, ge=1)  # compared answers an endpoint needs to be judged
