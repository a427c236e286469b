"""The master's side of multi-process serving: N data-path workers fed from one store.

The master keeps the authority (the store, the controller, health checks, the judge, the admin
API) and serves no traffic itself. Each worker (proxy.process.worker) binds the traffic port with
SO_REUSEPORT; the master holds the port bound but not listening, so it never receives a
connection and port 0 resolves once for all.

Invariants:
- Every publish in the master is sent to every worker; a worker acks the generation it routes
  by. `synced(g)` waits until all have acked g, so an admin call that returns after it knows no
  new request is routed by an older state.
- Worker reports are deltas; the master adds them into its own SlotRuntime/SlotStats, so
  /metrics and the judge read one aggregate as if there were a single process.
- A worker that dies is started again with the current state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from proxy.release.shadow import Outcome
from proxy.routing.state import Snapshot, routing_dict
from proxy.routing.stats import Report
from proxy.settings.types import parse_listen

if TYPE_CHECKING:
    from proxy.process.runtime import Slotswitch
    from proxy.settings.model import Settings

log = logging.getLogger("slotswitch.workers")

SYNC_WARN = 0.05  # a switch should reach every worker within 50 ms


class WorkerProc:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.acked = 0
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight: dict[str, int] = {}
        self.reader_task: asyncio.Task[None] | None = None


class WorkerSet:
    def __init__(self, app: Slotswitch, count: int) -> None:
        self.app = app
        self.count = count
        self.workers: list[WorkerProc] = []
        self.port = 0
        self.stopping = False
        self._activity = asyncio.Event()  # pulsed on every message from a worker
        self._sock: socket.socket | None = None
        self._redirect_sock: socket.socket | None = None
        self.redirect_port = 0  # redirect_http's port, held like the traffic port; 0 = none
        self.ticket_keys = b""  # the TLS session ticket keys every worker uses (proxy.process.tickets)
        self._health: dict[str, dict[str, bool]] = {}
        app.store.subscribe(self.on_publish)
        app.health.listeners.append(self.on_health)

    # -- start and stop ---------------------------------------------------------------------

    async def start(self) -> int:
        from proxy.process.host import reuseport_socket

        host, port = self.app.settings.listen_addr
        self._sock = reuseport_socket(host, port, listen=False)
        self.port = int(self._sock.getsockname()[1])
        if self.app.settings.redirect_http.listen:
            rhost, rport_n = parse_listen(self.app.settings.redirect_http.listen)
            self._redirect_sock = reuseport_socket(rhost, rport_n, listen=False)
            self.redirect_port = int(self._redirect_sock.getsockname()[1])
        self._health = self.health_vector()
        for index in range(self.count):
            self.workers.append(await self._spawn(index))
        await asyncio.gather(*(w.ready for w in self.workers))
        return self.port

    async def _spawn(self, index: int) -> WorkerProc:
        worker = WorkerProc(index)
        parent, child = socket.socketpair()
        level = self.app.settings.log_level
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.process.worker",
            "--fd",
            str(child.fileno()),
            "--log-level",
            level,
            pass_fds=(child.fileno(),),
        )
        child.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=parent)
        worker.reader_task = asyncio.get_running_loop().create_task(self._read(worker, reader))
        snap = self.app.store.current
        self._send(
            worker,
            {
                "type": "init",
                "settings": snap.settings.model_dump(mode="json"),
                "state": routing_dict(snap),
                "health": self._health,
                "port": self.port,
                "redirect_port": self.redirect_port,
                "ticket_keys": self.ticket_keys.hex(),
                "internal_secret": self.app.server.internal_secret.decode(),
                # Relative paths in the settings (preview.secret_file) resolve against its directory.
                "config_path": str(config.absolute()) if (config := self.app.config_path) is not None else None,
            },
        )
        return worker

    async def close_listeners(self, timeout: float) -> None:
        """Ask every worker to stop accepting and drain within `timeout`; returns once none accepts."""
        self.stopping = True
        for worker in self.workers:
            self._send(worker, {"type": "stop", "timeout": timeout})
        try:
            async with asyncio.timeout(2.0):
                await asyncio.gather(*(w.closed for w in self.workers))
        except TimeoutError:
            log.warning("some workers did not confirm they stopped accepting")

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the workers to finish draining and exit; kill those that overrun."""
        procs = [w.proc for w in self.workers if w.proc is not None]
        try:
            async with asyncio.timeout(timeout + 5.0):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for worker in self.workers:
            if worker.reader_task is not None:
                worker.reader_task.cancel()
            if worker.writer is not None:
                worker.writer.close()
        for sock in (self._sock, self._redirect_sock):
            if sock is not None:
                sock.close()
        return 0

    # -- to the workers ---------------------------------------------------------------------

    def _send(self, worker: WorkerProc, message: dict[str, Any]) -> None:
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def on_publish(self, old: Snapshot, new: Snapshot) -> None:
        message: dict[str, Any] = {"type": "state", "state": routing_dict(new)}
        if new.settings is not old.settings:
            message = {"type": "settings", "state": message["state"], "settings": new.settings.model_dump(mode="json")}
        for worker in self.workers:
            self._send(worker, message)

    def reload_tls(self, settings: Settings) -> None:
        """SIGHUP: every worker reads `settings`' certificates again (the master has just checked them)."""
        message = {"type": "tls", "settings": settings.model_dump(mode="json")}
        for worker in self.workers:
            self._send(worker, message)

    def set_ticket_keys(self, keys: bytes) -> None:
        self.ticket_keys = keys
        for worker in self.workers:
            self._send(worker, {"type": "tickets", "keys": keys.hex()})

    def reopen_logs(self) -> None:
        for worker in self.workers:
            self._send(worker, {"type": "reopen"})

    def health_vector(self) -> dict[str, dict[str, bool]]:
        snap = self.app.store.current
        return {name: {p.url: p.healthy for p in route.pools} for name, route in snap.routes.items()}

    def on_health(self) -> None:
        vector = self.health_vector()
        if vector != self._health:
            self._health = vector
            for worker in self.workers:
                self._send(worker, {"type": "health", "health": vector})

    async def synced(self, generation: int, timeout: float = 1.0) -> float:
        """Wait until every worker routes by `generation` (or newer); returns how long it took."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while any(w.acked < generation for w in self.workers):
                await self.activity()
        took = time.monotonic() - started
        if took > SYNC_WARN:
            log.warning("generation %d reached all workers only after %.0f ms", generation, took * 1000)
        return took

    # -- from the workers -------------------------------------------------------------------

    def _pulse(self) -> None:
        self._activity.set()
        self._activity = asyncio.Event()

    async def activity(self) -> None:
        """Return at the next message from any worker (a report comes every 50 ms)."""
        await self._activity.wait()

    async def _read(self, worker: WorkerProc, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            message = json.loads(line)
            self._pulse()
            kind = message["type"]
            if kind == "report":
                self._merge(worker, message["slots"])
                self.app.server.access_dropped += int(message.get("access_dropped", 0))
                if self.app.server.tls is not None:
                    self.app.server.tls.handshake_failures += int(message.get("tls_handshake_failures", 0))
                if "shadow" in message:
                    self._shadow(message["shadow"])
            elif kind == "ack":
                worker.acked = max(worker.acked, int(message["generation"]))
            elif kind == "closed":
                if not worker.closed.done():
                    worker.closed.set_result(None)
            elif kind == "ready":
                worker.acked = self.app.store.current.generation
                if not worker.ready.done():
                    worker.ready.set_result(message)
        if not self.stopping:
            await self._restart(worker)

    async def _restart(self, worker: WorkerProc) -> None:
        code = await worker.proc.wait() if worker.proc is not None else None
        if worker.writer is not None:
            worker.writer.close()
        log.error("worker %d exited (code %s): starting it again", worker.index, code)
        replacement = await self._spawn(worker.index)
        self.workers[worker.index] = replacement
        await replacement.ready
        self._merge(worker, {name: {"in_flight": 0} for name in worker.in_flight})

    def _shadow(self, data: dict[str, Any]) -> None:
        """A worker's shadow outcomes (proxy.release.shadow): into the master's results."""
        results = self.app.shadow
        results.count_dropped(int(data.get("dropped", 0)))
        for item in data.get("outcomes", ()):
            results.add(Outcome.from_json(item))

    def _merge(self, worker: WorkerProc, slots: dict[str, dict[str, Any]]) -> None:
        runtimes = self.app.registry.runtimes
        for name, data in slots.items():
            rt = runtimes.get(name)
            if rt is None:
                continue
            stats: Report | None = data.get("stats")
            if stats is not None:
                rt.stats.merge(stats)
                rt.requests += stats["total"]
            for reason, n in data.get("errors", {}).items():
                rt.errors[reason] = rt.errors.get(reason, 0) + n
            worker.in_flight[name] = int(data.get("in_flight", 0))
            rt.in_flight = sum(w.in_flight.get(name, 0) for w in self.workers)
            if rt.in_flight == 0 and rt.on_idle is not None:
                rt.on_idle()
