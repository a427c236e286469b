"""A data-path worker process: `python -m proxy.process.worker --fd N`.

The master (proxy.process.workers) starts N of these. Each binds the traffic port with SO_REUSEPORT, so
the kernel spreads connections over them, and runs the same data path as a single process. It
holds no authority: its routing state is whatever the master last sent over the channel (fd N,
one JSON object per line), and it answers every state message with an ack carrying the
generation it now routes by. Every REPORT_INTERVAL it sends what it counted (requests, latency,
errors, in-flight, drains) for the master to add up for /metrics and the judge.

Messages from the master: init {settings, state, health, port, redirect_port, internal_secret,
config_path, ticket_keys}, state {state}, settings {settings, state}, health {health}, tls {settings}
(SIGHUP: read the certificates again), tickets {keys} (rotated session ticket keys), reopen (SIGUSR1 at
the master: the access log file opens again), stop {timeout}. To the master: ready {pid, port}, ack
{generation}, report {slots, access_dropped, tls_handshake_failures}, bye {cut}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.datapath.tls import TLSError
from proxy.process import libssl
from proxy.process.host import configure_logging, reuseport_socket
from proxy.release.drain import Drainer
from proxy.release.shadow import Mirror, Outcome
from proxy.routing.state import Registry, Snapshot, Store, build_snapshot, routing_fields
from proxy.settings.model import Settings, parse_settings
from proxy.settings.types import parse_listen

log = logging.getLogger("slotswitch.worker")

REPORT_INTERVAL = 0.05  # seconds between reports: the judge sees worker traffic within this
MAX_OUTCOMES = 10_000  # shadow outcomes held for one report


class Worker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.settings: Settings | None = None
        self.config_path: Path | None = None
        self.registry = Registry(
            lambda name, up, _: UpstreamPool(self.loop, name, up.url, up.host, up.port, self.config_path)
        )
        self.store: Store | None = None
        self.server: ProxyServer | None = None
        self.drainer = Drainer()
        self.access_dropped = 0  # access log lines dropped, as last reported
        self.tls_failures = 0  # TLS handshakes that failed, as last reported
        self.mirror: Mirror | None = None
        self.outcomes: list[dict[str, Any]] = []  # shadow outcomes for the next report (bounded)
        self.same: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], int] = {}  # "same" outcomes, counted

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def _snapshot(self, state: dict[str, Any], settings: Settings) -> Snapshot:
        fields = routing_fields(state, set(settings.slots))
        return build_snapshot(self.registry, settings, **fields)  # type: ignore[arg-type]

    async def init(self, message: dict[str, Any]) -> None:
        settings = parse_settings(message["settings"])
        self.settings = settings
        config_path = message.get("config_path")  # relative paths in the settings resolve against its directory
        self.config_path = Path(config_path) if config_path else None
        self.store = Store(self._snapshot(message["state"], settings))
        self.store.subscribe(self.drainer.on_publish)
        self.server = ProxyServer(self.store, self.loop, config_path=self.config_path)
        self.server.load_tls(settings)  # checked by the master just before
        if self.server.tls is not None:
            libssl.set_groups(self.server.tls.front)
        self.set_ticket_keys(message.get("ticket_keys", ""))
        # The master's secret: its smoke and warm-up requests may land on any worker.
        self.server.internal_secret = message["internal_secret"].encode()
        self.mirror = Mirror(self.store, self.server.tap, self.shadow_outcome)
        self.server.shadow_to(self.mirror.take)
        self.apply_health(message.get("health", {}))
        host, port = settings.listen_addr
        await self.server.listen(host, port, sock=reuseport_socket(host, message["port"]))
        if message.get("redirect_port"):
            rhost, _ = parse_listen(settings.redirect_http.listen)
            sock = reuseport_socket(rhost, message["redirect_port"])
            await self.server.listen_redirect(rhost, 0, self.server.bound_port(), sock=sock)
        self.send({"type": "ready", "pid": os.getpid(), "port": self.server.bound_port()})

    def apply_state(self, state: dict[str, Any], settings: Settings | None = None) -> None:
        assert self.store is not None and self.server is not None
        settings = settings or self.store.current.settings
        new = self._snapshot(state, settings)
        self.store.adopt(new)
        self.server.apply(settings)
        self.registry.retire_unused(new)
        self.send({"type": "ack", "generation": new.generation})

    def apply_health(self, health: dict[str, dict[str, bool]]) -> None:
        assert self.store is not None
        for slot, pools in health.items():
            route = self.store.current.routes.get(slot)
            for pool in route.pools if route else ():
                if pool.url in pools:
                    pool.set_health(pools[pool.url])

    def set_ticket_keys(self, keys: str) -> None:
        if keys and self.server is not None and self.server.tls is not None:
            libssl.install(self.server.tls.front, bytes.fromhex(keys))

    def reload_tls(self, settings: Settings) -> None:
        assert self.server is not None
        try:
            self.server.load_tls(settings)
        except TLSError as exc:  # the files changed again since the master checked them
            log.error("certificate reload refused, keeping the running ones: %s", exc)
        for pool in self.registry.pools.values():
            pool.reload_tls()

    def shadow_outcome(self, outcome: Outcome) -> None:
        if outcome.result == "same" and not outcome.places:  # the usual case: counted, one entry per kind
            key = (outcome.endpoint, outcome.slot, outcome.upstreams, outcome.noise)
            if key in self.same or len(self.same) < MAX_OUTCOMES:
                self.same[key] = self.same.get(key, 0) + 1
                return
        if len(self.outcomes) < MAX_OUTCOMES:  # the master reads every 50 ms: this bound is never reached in practice
            self.outcomes.append(outcome.to_json())

    def report(self) -> None:
        assert self.store is not None
        slots = {}
        for name, rt in self.registry.runtimes.items():
            errors, rt.errors = rt.errors, {}
            slots[name] = {
                "stats": rt.stats.take(),
                "errors": errors,
                "in_flight": rt.in_flight,
                "drain": rt.drain,
            }
        dropped = self.server.access_log_dropped() if self.server is not None else 0
        message: dict[str, Any] = {"type": "report", "slots": slots, "access_dropped": dropped - self.access_dropped}
        self.access_dropped = dropped
        tls = self.server.tls if self.server is not None else None
        if tls is not None and tls.handshake_failures != self.tls_failures:
            message["tls_handshake_failures"] = tls.handshake_failures - self.tls_failures
            self.tls_failures = tls.handshake_failures
        if self.mirror is not None:
            mirror_dropped = self.mirror.dropped()
            for (endpoint, slot, upstreams, noise), n in self.same.items():
                self.outcomes.append(Outcome(endpoint, "same", slot, upstreams, (), noise, count=n).to_json())
            self.same = {}
            if self.outcomes or mirror_dropped:
                message["shadow"] = {"outcomes": self.outcomes, "dropped": mirror_dropped}
                self.outcomes = []
        self.send(message)

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report()

    async def run(self) -> int:
        reporter: asyncio.Task[None] | None = None
        try:
            while line := await self.reader.readline():
                message = json.loads(line)
                kind = message["type"]
                if kind == "init":
                    await self.init(message)
                    reporter = self.loop.create_task(self.reporter())
                elif kind == "state":
                    self.apply_state(message["state"])
                elif kind == "settings":
                    self.apply_state(message["state"], parse_settings(message["settings"]))
                elif kind == "tickets":
                    self.set_ticket_keys(message["keys"])
                elif kind == "tls":
                    self.reload_tls(parse_settings(message["settings"]))
                elif kind == "reopen":
                    if self.server is not None:
                        self.server.reopen_logs()
                elif kind == "health":
                    self.apply_health(message["health"])
                elif kind == "stop":
                    return await self.stop(float(message["timeout"]))
            log.error("the master went away: stopping")
            return await self.stop(0.0)
        finally:
            if reporter is not None:
                reporter.cancel()

    async def stop(self, timeout: float) -> int:
        if self.server is not None:
            self.server.close_listener()
        self.send({"type": "closed"})
        cut = await self.server.shutdown(timeout) if self.server is not None else 0
        self.drainer.cancel_all()
        if self.mirror is not None and self.server is not None:
            self.server.shadow_to(None)
            await self.mirror.close()
        for pool in list(self.registry.pools.values()):
            pool.retire()
            pool.cut_off()
        if self.store is not None:
            self.report()
        self.send({"type": "bye", "cut": cut})
        await self.writer.drain()
        return 0


async def main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    worker = Worker(reader, writer)
    try:
        return await worker.run()
    finally:
        writer.close()


def cli() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description="slotswitch data-path worker (started by the master)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    configure_logging(args.log_level)
    # Stopping is the master's decision: systemd (KillMode=control-group), `tini -g` and Ctrl-C signal
    # the whole process group, and a worker that died on SIGTERM would drop its in-flight requests.
    # The master sends "stop" (drain) on SIGTERM/SIGINT; if the master dies, the socket's EOF stops us.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):  # USR1: reopen, from the master
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(uvloop.run(main(args.fd)))


if __name__ == "__main__":
    cli()
