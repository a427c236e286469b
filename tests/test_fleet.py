"""Fleet mode: in-process replicas agreeing on the active slot through a real redis-server.

Every test starts its own `redis-server --save '' --appendonly no` on a free loopback port (so a
restart loses its data, the worst case), and replicas with `state.backend: redis` on one key
prefix. Convergence is awaited through each replica's store listener; outages are waited out by
polling the replica's own flags in bounded loops. Traffic goes through each replica's proxy port.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from admin.openapi import DOCUMENT
from proxy.fleet.store import RedisState
from proxy.fleet.sync import document
from proxy.process.runtime import Slotswitch, StartupError
from proxy.routing.state import Snapshot
from tests.conftest import StartProxy, Upstreams
from tests.procutil import track
from tests.rawhttp import RawClient
from tests.test_admin_api import admin, call, status

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install redis-server)")
WAIT = 5.0  # bound of every wait here; convergence itself takes milliseconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll `check` every 10 ms, at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not await _value(check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else bool(result)


class RedisServer:
    """A real redis-server without persistence on 127.0.0.1:port, killed and restarted at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS is not None
        args = ["--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = track(
            await asyncio.create_subprocess_exec(
                REDIS, *args, "--dir", str(self.workdir), stdout=asyncio.subprocess.DEVNULL
            )
        )
        deadline = time.monotonic() + WAIT
        while not await self._pong():
            assert self.proc.returncode is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            await asyncio.sleep(0.01)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.write(b"PING\r\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line == b"+PONG\r\n"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """Tests name it before start_proxy, so it is stopped after the replicas."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class Partition:
    """A TCP relay to Redis that a test can cut: a replica behind it is partitioned from the store."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.cut:
                raise OSError("partitioned")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self.writers.discard(writer)

    def partition(self) -> None:
        self.cut = True
        for writer in list(self.writers):
            writer.close()

    async def close(self) -> None:
        self.partition()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def fleet_state(redis: RedisServer | str, **extra: Any) -> dict[str, Any]:
    url = redis.url if isinstance(redis, RedisServer) else redis
    return {"backend": "redis", "url": url, "key_prefix": "test-fleet", "poll_interval": "0.2s", **extra}


async def replicas(start: StartProxy, redis: RedisServer, n: int) -> list[Slotswitch]:
    return [await start(state=fleet_state(redis)) for _ in range(n)]


def reaching(app: Slotswitch, generation: int) -> asyncio.Future[float]:
    """Resolves with time.perf_counter() when `app` routes by `generation` (or a later one)."""
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def listener(old: Snapshot, new: Snapshot) -> None:
        if new.generation >= generation and not done.done():
            done.set_result(time.perf_counter())

    if app.store.current.generation >= generation:
        done.set_result(time.perf_counter())
    app.store.subscribe(listener)
    return done


async def converge(apps: list[Slotswitch], generation: int) -> list[float]:
    return list(await asyncio.wait_for(asyncio.gather(*(reaching(a, generation) for a in apps)), WAIT))


async def slots_served(app: Slotswitch, n: int = 5) -> set[str]:
    """X-Slotswitch-Slot of `n` requests through the replica's proxy port."""
    seen = set()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{app.proxy_port}/") as r:
                assert r.status == 200
                seen.add(r.headers["X-Slotswitch-Slot"])
    return seen


async def switch(app: Slotswitch, slot: str, **headers: str) -> tuple[int, dict[str, Any]]:
    async with admin(app) as s:
        code, body, _ = await call(s, "POST", "/v1/switch", json={"slot": slot}, headers=headers)
    return code, body


async def metric(app: Slotswitch, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r:
        text = await r.text()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


# -- propagation --------------------------------------------------------------------------------


async def test_a_switch_on_one_replica_reaches_every_replica(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    apps = await replicas(start_proxy, redis_server, 3)
    assert [a.store.current.generation for a in apps] == [1, 1, 1]
    arrived = [reaching(a, 2) for a in apps]
    sent = time.perf_counter()
    code, body = await switch(apps[0], "green")
    assert (code, body["generation"], body["active"]) == (200, 2, "green")
    took = max(await asyncio.wait_for(asyncio.gather(*arrived), WAIT)) - sent
    assert took < 1.0, f"the switch took {took:.3f}s to reach every replica"
    for app in apps:
        assert app.store.current.active == "green"
        assert await slots_served(app) == {"green"}
        assert await metric(app, "slotswitch_state_generation") == 2.0  # kept right by adopt()
        assert await metric(app, "slotswitch_state_store_up") == 1.0
        async with admin(app) as s:
            store = (await status(s))["state_store"]
        assert (store["backend"], store["up"], store["generation_seen"]) == ("redis", True, 2)
    assert apps[1].fleet is not None and apps[1].fleet.adopted["message"] == 1  # by pub/sub, not a poll
    async with admin(apps[2]) as s:  # the fleet's history, read on a replica that did not make the change
        code, history, _ = await call(s, "GET", "/v1/history")
    first = history["entries"][0]
    assert (first["action"], first["generation"], first["outcome"]) == ("switch", 2, "applied")
    assert apps[0].fleet is not None and first["replica"] == apps[0].fleet.replica


async def test_two_operators_on_two_replicas_cannot_both_win(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    a, b = await replicas(start_proxy, redis_server, 2)
    for generation, slot in ((1, "green"), (2, "blue"), (3, "green")):
        tag = {"If-Match": str(generation)}
        answers = await asyncio.gather(switch(a, slot, **tag), switch(b, slot, **tag))
        assert sorted(code for code, _ in answers) == [200, 412], answers
        loser = next(body for code, body in answers if code == 412)
        assert loser["error"]["code"] == "generation_mismatch"
        await converge([a, b], generation + 1)
        assert {a.store.current.active, b.store.current.active} == {slot}
    async with admin(a) as s:
        _, history, _ = await call(s, "GET", "/v1/history")
    applied = [e["generation"] for e in history["entries"] if e["outcome"] == "applied"]
    assert applied == [4, 3, 2, 1]  # one applied change per generation (1: the seed at start)
    assert sum(e.get("status") == 412 for e in history["entries"]) == 3  # every loser, from either replica


async def test_a_restarted_replica_picks_up_the_fleets_state(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    a, b = await replicas(start_proxy, redis_server, 2)
    await b.stop(timeout=1.0)
    assert (await switch(a, "green"))[0] == 200  # made while b is down
    again = await start_proxy(state=fleet_state(redis_server))  # its config still says blue
    assert (again.store.current.generation, again.store.current.active) == (2, "green")
    assert await slots_served(again) == {"green"}  # from its first request


async def test_the_poll_catches_what_pub_sub_missed(redis_server: RedisServer, start_proxy: StartProxy) -> None:
    """A write without a message (as if it was lost) and a store that loses its data while connected."""
    app = await start_proxy(state=fleet_state(redis_server))
    assert app.fleet is not None
    probe = RedisState(redis_server.url, "test-fleet", "probe")
    try:
        snap = replace(app.store.current, generation=2, active="green", previous="blue", action="switch")
        await probe.client.hset(probe.key, mapping={"generation": 2, "state": document(snap)})  # no PUBLISH
        await converge([app], 2)  # within poll_interval (0.2 s)
        # Adopted without a message: by the poll, or (on a loaded machine) by the resync of a
        # subscription that was re-established meanwhile; never through pub/sub.
        adopted = app.fleet.adopted
        assert app.store.current.active == "green" and adopted["poll"] + adopted["resync"] >= 1, adopted
        assert adopted["message"] == 0, adopted
        await probe.client.flushall()  # Redis lost everything, the connections stay up

        async def reseeded() -> bool:
            return (await probe.read()).generation == 2

        await until(reseeded, "the poll re-seeding the store")
        assert app.store.current.generation == 2
    finally:
        await probe.close()


async def test_the_judges_rollback_on_one_replica_applies_to_all(
    redis_server: RedisServer, start_proxy: StartProxy, upstreams: Upstreams
) -> None:
    """Each replica judges its own traffic: only b sees green fail, and its rollback reaches a."""
    policy = {"min_requests": 20}
    a, b = [await start_proxy(state=fleet_state(redis_server), sticky={"by": "none"}, analysis=policy) for _ in "ab"]
    for app in (a, b):
        await app.analyzer.stop()  # driven by hand below
    async with admin(a) as s:
        code, _, _ = await call(s, "POST", "/v1/ramp", json={"slot": "green", "steps": [50, 100], "interval": "1h"})
    assert code == 200
    await converge([a, b], 2)
    rolled = [reaching(app, 3) for app in (a, b)]
    async with aiohttp.ClientSession() as s:
        await s.post(f"{upstreams.green.url}/admin/health?ok=0")  # green's /health answers 503 from now on
    client = await RawClient.connect(b.proxy_port)
    try:
        for i in range(400):
            await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            await client.read_response()
            if i % 10 == 9:
                b.analyzer.tick()
            if all(f.done() for f in rolled):
                break
    finally:
        await client.close()
    await asyncio.wait_for(asyncio.gather(*rolled), WAIT)
    for app in (a, b):
        snap = app.store.current
        assert (snap.action, snap.changed_by, snap.active, snap.ramp) == ("rollback", "judge", "blue", None)
    assert a.analyzer.last is None or a.analyzer.last.outcome != "fail"  # a saw no failing traffic itself


# -- faults -------------------------------------------------------------------------------------


async def test_redis_outage_fail_static_refuse_changes_then_converge(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    relay = Partition(redis_server.port)
    await relay.start()
    try:
        a, b = await replicas(start_proxy, redis_server, 2)
        c = await start_proxy(state=fleet_state(f"redis://127.0.0.1:{relay.port}/0"))  # c reaches Redis via a relay
        apps = [a, b, c]
        assert (await switch(a, "green"))[0] == 200
        await converge(apps, 2)

        await redis_server.kill()
        await until(lambda: not any(app.fleet is not None and app.fleet.up for app in apps), "every replica down")
        for app in apps:
            assert await slots_served(app) == {"green"}  # the last known state, not a guess
            code, body = await switch(app, "blue")
            assert (code, body["error"]["code"]) == (503, "state_store_unavailable"), body
            async with admin(app) as s:
                store = (await status(s))["state_store"]
            assert store["up"] is False and store["last_error"], store
            assert await metric(app, "slotswitch_state_store_up") == 0.0
            assert app.store.current.generation == 2
        blue = a.settings.slots["blue"].upstreams[0].url
        async with admin(a) as s:  # every change, and the shared history, answer the documented 503
            for method, path, doc_path, body in (
                ("POST", "/v1/rollback", "/v1/rollback", {}),
                ("PUT", "/v1/slots/blue", "/v1/slots/{slot}", {"upstreams": [blue]}),
                ("GET", "/v1/history", "/v1/history", None),
            ):
                code, answer, _ = await call(s, method, path, json=body)
                assert (code, answer["error"]["code"]) == (503, "state_store_unavailable"), (path, answer)
                assert "503" in DOCUMENT["paths"][doc_path][method.lower()]["responses"], path

        relay.partition()  # c stays cut off while Redis comes back empty
        await redis_server.start()
        await until(lambda: all(app.fleet is not None and app.fleet.up for app in (a, b)), "a and b reconnected")
        assert (await switch(a, "blue"))[0] == 200  # re-seeded at 2, so this is 3; c misses the message
        await converge([a, b], 3)
        assert c.store.current.generation == 2 and await slots_served(c) == {"green"}

        relay.cut = False  # heal: c reconnects, resyncs and picks up generation 3
        await converge([c], 3)
        assert c.fleet is not None and c.fleet.adopted["resync"] >= 1
        for app in apps:
            assert await slots_served(app) == {"blue"}
    finally:
        await relay.close()


async def test_a_replica_refuses_to_start_while_redis_is_down_unless_allowed_to_fall_back(
    redis_server: RedisServer, start_proxy: StartProxy
) -> None:
    a = await start_proxy(state=fleet_state(redis_server))
    assert (await switch(a, "green"))[0] == 200
    await redis_server.kill()
    await until(lambda: a.fleet is not None and not a.fleet.up, "a sees the outage")
    with pytest.raises(StartupError, match="refusing to serve with a guessed routing state"):
        await start_proxy(state=fleet_state(redis_server))

    b = await start_proxy(state=fleet_state(redis_server, fallback_to_config=True))
    assert (b.store.current.generation, b.store.current.active) == (1, "blue")  # the config's state
    assert b.fleet is not None and not b.fleet.up
    await redis_server.start()  # empty: b may seed generation 1 first, a's generation 2 wins
    await converge([b], 2)
    await until(lambda: b.fleet is not None and b.fleet.up, "b up")
    assert await slots_served(b) == {"green"}
    probe = RedisState(redis_server.url, "test-fleet", "probe")
    try:
        assert (await probe.read()).generation == 2
    finally:
        await probe.close()
