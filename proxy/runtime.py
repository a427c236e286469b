"""Wiring: settings -> registry -> first snapshot -> store -> proxy listener, controller, admin API.

`Slotswitch` is what `slotswitch run` starts and what the tests start in-process. `run()` adds
the process concerns: uvloop, signals (SIGHUP reloads, SIGTERM/SIGINT drain and exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from admin.api import Services, make_admin_app
from admin.metrics import make_registry
from proxy.analysis import Analyzer
from proxy.control import Controller
from proxy.health import HealthChecker
from proxy.server import ProxyServer
from proxy.settings import ConfigError, Settings, is_loopback, load_settings, parse_listen
from proxy.state import Registry, Store, build_snapshot
from proxy.upstream import UpstreamPool

log = logging.getLogger("slotswitch")

TOKEN_ENV = "SLOTSWITCH_ADMIN_TOKEN"


class StartupError(Exception):
    pass


class Slotswitch:
    """One running proxy: the traffic listener, the control side and the admin API."""

    def __init__(self, settings: Settings, *, config_path: str | Path | None = None, token: str | None = None) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path else None
        self.token = os.environ.get(TOKEN_ENV, "") if token is None else token
        self.loop = asyncio.get_running_loop()
        loop = self.loop
        self.registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port))
        first = build_snapshot(self.registry, settings, generation=1, active=settings.active, previous=None)
        self.store = Store(first)
        self.server = ProxyServer(self.store, loop)
        self.controller = Controller(self.store, self.registry, self.server)
        self.health = HealthChecker(self.store, self.server)
        self.controller.gates.append(self.health.gate)
        self.analyzer = Analyzer(self.controller)
        self.services = Services(self.controller, self.health, self.analyzer, make_registry(self.controller))
        self._admin_runner: web.AppRunner | None = None
        self.proxy_port = 0
        self.admin_port = 0
        self.stopped = asyncio.Event()

    def _check_admin_exposure(self) -> None:
        host, _ = parse_listen(self.settings.admin.listen)
        if not self.token and not is_loopback(host):
            raise StartupError(
                f"admin.listen is {self.settings.admin.listen}, not loopback, and {TOKEN_ENV} is not set: "
                "refusing to expose an unauthenticated admin API"
            )

    async def start(self) -> None:
        self._check_admin_exposure()
        host, port = self.settings.listen_addr
        await self.server.listen(host, port)
        self.proxy_port = self.server.bound_port()
        await self.health.start()
        await self.health.run_round()  # the gate and /v1/status have data from the start
        self.analyzer.start()
        runner = web.AppRunner(make_admin_app(self.services, self.token), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        ahost, aport = parse_listen(self.settings.admin.listen)
        site = web.TCPSite(runner, ahost, aport, reuse_address=True)
        await site.start()
        self._admin_runner = runner
        server = site._server
        assert server is not None
        self.admin_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info(
            "slotswitch listening on %s:%d (active slot %s), admin on %s:%d",
            host,
            self.proxy_port,
            self.store.current.active,
            ahost,
            self.admin_port,
        )

    def reload(self) -> bool:
        """Re-read the config file. An invalid file is refused and the running config is kept."""
        if self.config_path is None:
            log.warning("reload requested but no config file was given")
            return False
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config:\n%s", exc)
            return False
        if settings.listen != self.settings.listen or settings.admin.listen != self.settings.admin.listen:
            log.warning("listen addresses changed in the config: they take effect only after a restart")
        snap = self.controller.reload(settings)
        self.settings = settings
        log.info("config reloaded from %s (generation %d)", self.config_path, snap.generation)
        return True

    async def stop(self, timeout: float | None = None) -> int:
        """Graceful stop: stop accepting, finish in-flight requests within the drain timeout."""
        timeout = self.settings.drain_timeout if timeout is None else timeout
        cut = await self.server.shutdown(timeout)
        self.controller.drainer.cancel_all()
        await self.analyzer.stop()
        await self.health.stop()
        for pool in list(self.registry.pools.values()):
            pool.retire()
            pool.cut_off()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.stopped.set()
        return cut


async def serve(settings: Settings, config_path: str | Path | None) -> int:
    app = Slotswitch(settings, config_path=config_path)
    try:
        await app.start()
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight requests (up to %.1fs)", app.settings.drain_timeout)
    await app.stop()
    return 0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run(settings: Settings, config_path: str | Path | None) -> int:
    import uvloop

    configure_logging(settings.log_level)
    return uvloop.run(serve(settings, config_path))
