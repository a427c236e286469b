"""The Redis side of fleet mode: keys, the one write script, reads, the audit stream, pub/sub.

Keys (`P` is `state.key_prefix`):
- `P:state`, a hash: `generation` (an integer) and `state` (the JSON document, proxy.fleet.sync.document).
- `P:audit`, a stream of audit entries (field `entry`, proxy/release/audit.py's JSON), capped at about
  STREAM_MAXLEN entries (XADD MAXLEN ~).
- `P:changes`, a pub/sub channel: every write publishes the new state document on it.

Invariants:
- The routing state is written only by WRITE_SCRIPT, which checks the stored generation, sets the
  hash, appends the audit entry and publishes, as one atomic step: a reader never sees a state
  whose entry or notification is missing, and two writers on one generation cannot both win.
- The client never retries by itself (retries=0): a failed command raises at once, so the replica
  knows the store is down and can refuse changes rather than wait.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger("slotswitch.fleet")

STREAM_MAXLEN = 10_000
TIMEOUT = 1.0  # seconds for a connect or a command: a store slower than that counts as down

# KEYS[1] state hash, KEYS[2] audit stream.
# ARGV[1] mode: "cas" (write only if the stored generation is ARGV[2]) or "seed" (write only if the
# stored generation is missing or lower than ARGV[3]); ARGV[2] expected generation; ARGV[3] new
# generation; ARGV[4] state JSON; ARGV[5] audit entry JSON; ARGV[6] channel; ARGV[7] stream cap.
# Returns {1, new generation, ""} when written, else {0, stored generation, stored JSON or ""}.
WRITE_SCRIPT = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
local new = tonumber(ARGV[3])
local ok
if ARGV[1] == 'seed' then ok = stored < new else ok = stored == tonumber(ARGV[2]) end
if not ok then
  return {0, stored, redis.call('HGET', KEYS[1], 'state') or ''}
end
redis.call('HSET', KEYS[1], 'generation', new, 'state', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'entry', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[4])
return {1, new, ''}
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store holds: generation 0 and doc None when it holds nothing (empty or lost)."""

    generation: int
    doc: str | None


def redacted(url: str) -> str:
    """The URL without its password, for logs and /v1/status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisState:
    """One replica's connection to the shared state: a command connection pool and pub/sub."""

    def __init__(self, url: str, prefix: str, replica: str) -> None:
        self.url = redacted(url)
        self.client: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            client_name=f"slotswitch:{replica}",
        )
        self.key, self.stream, self.channel = f"{prefix}:state", f"{prefix}:audit", f"{prefix}:changes"
        self._write = self.client.register_script(WRITE_SCRIPT)

    async def read(self) -> Stored:
        generation, doc = await self.client.hmget(self.key, ["generation", "state"])
        if generation is None or doc is None:
            return Stored(0, None)
        return Stored(int(generation), str(doc))

    async def generation(self) -> int:
        raw = await self.client.hget(self.key, "generation")
        return 0 if raw is None else int(raw)

    async def write(
        self, mode: Literal["cas", "seed"], expected: int, generation: int, doc: str, entry: dict[str, Any]
    ) -> tuple[bool, Stored]:
        """Run WRITE_SCRIPT. (True, the new state) when written, else (False, what the store holds)."""
        line = json.dumps(entry, separators=(",", ":"), allow_nan=False)
        args = [mode, expected, generation, doc, line, self.channel, STREAM_MAXLEN]
        written, stored, stored_doc = await self._write(keys=[self.key, self.stream], args=args)
        if written:
            return True, Stored(int(stored), doc)
        return False, Stored(int(stored), str(stored_doc) or None)

    async def record(self, entry: dict[str, Any]) -> None:
        """Append an entry that is not a state change (a refused request) to the audit stream."""
        line = json.dumps(entry, separators=(",", ":"), allow_nan=False)
        await self.client.xadd(self.stream, {"entry": line}, maxlen=STREAM_MAXLEN, approximate=True)

    async def history(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` audit entries of the whole fleet, newest first."""
        rows = await self.client.xrevrange(self.stream, count=limit) or []
        entries = []
        for _id, fields in rows:
            try:
                entry = json.loads(str((fields or {}).get("entry", "")))
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def subscriber(self) -> PubSub:
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        await self.client.aclose()
