"""Wiring: settings -> registry -> first snapshot -> store -> proxy listener, controller, admin API.

`Slotswitch` is what `slotswitch run` starts and what the tests start in-process. `run()` adds
the process concerns: uvloop, signals (SIGHUP reloads, SIGUSR1 reopens the access log file, SIGTERM/SIGINT
drain and exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from functools import partial
from pathlib import Path

from aiohttp import web

from admin.api import Services, make_admin_app, server_log
from admin.auth import TOKEN_ENV, AuthConfigError, Authenticator, Credential, check_exposure, load_credentials
from admin.metrics import make_metrics_app, make_registry
from proxy import native
from proxy.datapath.pool import UpstreamPool
from proxy.datapath.server import ProxyServer
from proxy.datapath.tls import CertInfo, TLSError, check_client
from proxy.fleet.persist import StateError, StateStore, initial_snapshot, open_store, persisting
from proxy.fleet.sync import Fleet, FleetStartError
from proxy.process import libssl
from proxy.process.host import configure_logging, raise_nofile, refused
from proxy.process.workers import WorkerSet
from proxy.release.analysis import Analyzer
from proxy.release.audit import AuditLog, reset_entry
from proxy.release.audit import event as audit_event
from proxy.release.audit import refused as audit_refused
from proxy.release.control import Controller
from proxy.release.gates import Gates
from proxy.release.health import HealthChecker
from proxy.release.promql import PromQLPoller
from proxy.release.shadow import Mirror, Outcome
from proxy.release.shadow_results import ShadowResults
from proxy.routing.state import Registry, Snapshot, Store
from proxy.settings.model import ConfigError, Settings, load_settings
from proxy.settings.paths import beside_config
from proxy.settings.types import parse_listen

log = logging.getLogger("slotswitch")


class StartupError(Exception):
    pass


class Slotswitch:
    """One running proxy: the traffic listener, the control side and the admin API."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | Path | None = None,
        token: str | None = None,
        workers: int = 1,
        state_path: str | Path | None = None,
        audit_path: str | Path | None = None,
        reset_state: bool = False,
    ) -> None:
        """`workers` > 1 runs the data path in that many processes (proxy.process.workers); 1 serves in this one.
        `state_path`/`audit_path` override the config's state.file/admin.audit_log (which, when
        empty, mean files next to the config file, or memory only without one)."""
        self.settings = settings
        self.config_path = Path(config_path) if config_path else None
        self.proxy_port = 0
        self.redirect_port = 0  # redirect_http's bound port; 0 when it is not set
        self.token = os.environ.get(TOKEN_ENV, "") if token is None else token
        self.loop = asyncio.get_running_loop()
        loop = self.loop
        config = self.config_path
        self.registry = Registry(lambda name, up, _: UpstreamPool(loop, name, up.url, up.host, up.port, config))
        # Everything the config points at is checked before anything is written: tokens, state, audit log.
        try:
            self.auth = Authenticator(self._credentials(settings))  # replaced whole by reload()
        except AuthConfigError as exc:
            raise StartupError(str(exc)) from None
        self.state_store = self._open_state(state_path)
        first = self._first_snapshot(reset_state)
        self.store = Store(first)
        self.server = ProxyServer(self.store, loop, config_path=self.config_path, serves=workers <= 1)
        try:  # the listener's certificates and the upstreams' TLS files: every problem at once
            self._check_tls(settings)
        except TLSError as exc:
            raise StartupError("\n".join(exc.errors)) from None
        self.controller = Controller(self.store, self.registry, self.server)
        self.health = HealthChecker(self.store, self.server)
        self.controller.gates.append(self.health.gate)
        self.gates = Gates(self.store, self.server, self.health, config_path=self.config_path)
        self.controller.gates += [self.gates.smoke_gate, self.gates.migration_gate]
        self.analyzer = Analyzer(self.controller)
        # Fleet mode: the routing state is agreed through Redis; `first` is provisional until start().
        self.fleet = Fleet(self.controller, settings.state) if settings.state.backend == "redis" else None
        self.analyzer.fleet = self.fleet
        self.promql = PromQLPoller(self.store, self.analyzer.candidate, self.analyzer.take_promql)
        self.workers = WorkerSet(self, workers) if workers > 1 else None
        # Shadow traffic: the results live here; the mirror runs where the data path does (workers
        # run their own and send their outcomes with their reports).
        self.shadow = ShadowResults(self.store)
        self.store.subscribe(self.shadow.on_publish)
        self.controller.gates.append(self.shadow.gate)
        self.mirror: Mirror | None = None
        if self.workers is None:
            self.mirror = Mirror(self.store, self.server.tap, self._shadow_outcome)
            self.shadow.on_reset.append(self.mirror.forget_noise)
            self.shadow.dropped_source = self.mirror.dropped
            self.server.shadow_to(self.mirror.take)
        self.services = Services(
            self.controller,
            self.health,
            self.analyzer,
            make_registry(
                self.controller, store_up=self._store_up if self.fleet is not None else None, shadow=self.shadow
            ),
            synced=self.workers.synced if self.workers is not None else None,
            gates=self.gates,
            fleet=self.fleet,
            shadow=self.shadow,
        )
        self.audit = self._open_audit(audit_path)
        if reset_state:
            self.audit.append(reset_entry(first))
        if self.state_store is not None:
            self.store.subscribe(persisting(self.state_store))
        self.store.subscribe(self.audit.on_publish)
        self.server.events.append(
            lambda action, details: self.audit.append(audit_event(self.store.current, time.time(), action, details))
        )
        self._admin_runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.admin_port = 0
        self.metrics_port = 0  # admin.metrics_listen's bound port; 0 when it is not set
        self.stopped = asyncio.Event()
        self._ticket_task: asyncio.Task[None] | None = None

    def _shadow_outcome(self, outcome: Outcome) -> None:
        self.shadow.add(outcome)

    def _open_state(self, state_path: str | Path | None) -> StateStore | None:
        path = beside_config(self.settings.state.file, self.config_path, ".state.json")
        try:
            return open_store(self.settings.state, Path(state_path) if state_path is not None else path)
        except StateError as exc:
            raise StartupError(str(exc)) from None

    def _open_audit(self, audit_path: str | Path | None) -> AuditLog:
        path = beside_config(self.settings.admin.audit_log, self.config_path, ".audit.jsonl")
        path = Path(audit_path) if audit_path is not None else path
        try:
            return AuditLog(path)
        except OSError as exc:
            raise StartupError(f"cannot open the audit log {path}: {exc.strerror}") from None

    def _first_snapshot(self, reset: bool) -> Snapshot:
        try:
            first = initial_snapshot(self.registry, self.settings, self.state_store, reset=reset)
        except StateError as exc:
            raise StartupError(f"routing state {exc}") from None
        except OSError as exc:
            raise StartupError(f"cannot save the routing state to {self.state_store}: {exc.strerror}") from None
        if first.action == "restore":
            log.info("%s: active %s, generation %d", first.reason, first.active, first.generation)
        return first

    def _credentials(self, settings: Settings) -> tuple[Credential, ...]:
        """Every admin token's secret, read now; AuthConfigError if one cannot be read or none is
        configured where one is required. The admin listener is the running one (it needs a restart)."""
        credentials = load_credentials(settings.admin, self.token, self.config_path)
        check_exposure(
            self.settings.admin.listen,
            settings.admin.insecure_loopback,
            credentials,
            tls=self.settings.admin.tls,
            allow_plaintext=settings.admin.allow_plaintext,
        )
        return credentials

    def _check_tls(self, settings: Settings) -> None:
        """Load the listener's certificates (new handshakes get them) after checking the upstreams' TLS
        files; TLSError with every problem, and nothing changed, if one cannot be used."""
        errors = [
            problem
            for name, slot in settings.slots.items()
            if any(up.https for up in slot.upstreams)
            and (problem := check_client(slot.tls, self.config_path, f"slots.{name}.tls")) is not None
        ]
        if errors:
            raise TLSError(errors)
        if settings.tls.enabled != (self.server.tls is not None) and self.proxy_port:
            log.warning("tls added to or removed from the listener: that takes effect only after a restart")
        elif settings.tls.enabled:
            self.server.load_tls(settings)
            assert self.server.tls is not None
            libssl.set_groups(self.server.tls.front)
        for pool in self.registry.pools.values():
            pool.reload_tls()

    @staticmethod
    def days_left(info: CertInfo) -> float:
        return (info.not_after - time.time()) / 86400

    def _store_up(self) -> bool:
        return self.fleet is not None and self.fleet.up

    async def start(self) -> None:
        host, port = self.settings.listen_addr
        if self.fleet is not None:  # first: no traffic is served before the state is agreed
            try:
                await self.fleet.start()
            except FleetStartError as exc:
                raise StartupError(str(exc)) from None
        await self.health.start()
        await self.health.run_round()  # the gate and /v1/status have data from the start
        if self.server.tls is not None:  # before the workers start: they get the keys in their init message
            self._rotate_tickets()
            if self.settings.tls.ticket_key_rotation > 0:
                self._ticket_task = asyncio.get_running_loop().create_task(self._ticket_rotation())
        if self.workers is not None:
            self.proxy_port = await self.workers.start()
        else:
            await self.server.listen(host, port)
            self.proxy_port = self.server.bound_port()
            if self.settings.redirect_http.listen:
                rhost, rport = parse_listen(self.settings.redirect_http.listen)
                await self.server.listen_redirect(rhost, rport, self.proxy_port)
                self.redirect_port = self.server.bound_port(redirect=True)
        if self.workers is not None:
            self.redirect_port = self.workers.redirect_port
        self.gates.proxy_port = self.proxy_port
        self.analyzer.start()
        self.promql.start()
        admin = self.settings.admin
        try:
            admin_app = make_admin_app(self.services, self.auth, self.audit)
            self._admin_runner, self.admin_port = await self._serve(admin_app, "admin.listen", admin.listen)
            if admin.metrics_listen:  # the same registry as the admin's /metrics, without a token
                metrics_app = make_metrics_app(self.services.metrics)
                self._metrics_runner, self.metrics_port = await self._serve(
                    metrics_app, "admin.metrics_listen", admin.metrics_listen
                )
        except StartupError:
            await self.stop(0.0)  # nothing started stays behind (workers, checks, the other listener)
            raise
        if self.workers is not None:
            log.info("serving traffic with %d worker processes", self.workers.count)
        log.info(
            "slotswitch listening on %s:%d (active slot %s), admin on %s:%d",
            host,
            self.proxy_port,
            self.store.current.active,
            parse_listen(admin.listen)[0],
            self.admin_port,
        )
        if self.server.tls is not None:
            for info in self.server.tls.expiries():
                log.info("tls certificate %s (%s) expires in %.0f days", info.name, info.path, self.days_left(info))
        if self.redirect_port:
            log.info(
                "redirecting http on port %d to https (%s forwarded)",
                self.redirect_port,
                self.settings.redirect_http.acme_prefix or "nothing",
            )
        if self._metrics_runner is not None:  # a line of its own: the line above keeps its format
            log.info(
                "metrics on %s:%d (GET /metrics, no token)", parse_listen(admin.metrics_listen)[0], self.metrics_port
            )

    def _rotate_tickets(self) -> None:
        """New session ticket keys, the same in every worker (proxy.process.tickets)."""
        assert self.server.tls is not None
        keys = libssl.new_keys()
        if self.workers is not None:
            self.workers.set_ticket_keys(keys)
        libssl.install(self.server.tls.front, keys)  # this process's listener, or the admin API's

    async def _ticket_rotation(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tls.ticket_key_rotation or 3600.0)
            if self.settings.tls.ticket_key_rotation > 0 and self.server.tls is not None:
                self._rotate_tickets()

    async def _serve(self, app: web.Application, setting: str, listen: str) -> tuple[web.AppRunner, int]:
        """Serve `app` on `listen` (the value of config key `setting`); returns its runner and bound port.
        A port that cannot be bound is a StartupError naming the key."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, logger=server_log())
        await runner.setup()
        host, port = parse_listen(listen)
        # admin.tls: the traffic listener's context, so a SIGHUP renews both
        tls = self.server.tls.front if self.settings.admin.tls and self.server.tls is not None else None
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {setting} {listen}: {exc.strerror or exc}") from None
        server = site._server
        assert server is not None
        return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def _refuse_reload(self, errors: list[str]) -> None:
        """A reload that cannot be applied: logged one error a line, counted, and audited."""
        refused(errors)
        self.controller.reloads["refused"] += 1
        self.audit.append(
            audit_refused(
                self.store.current,
                time.time(),
                actor="sighup",
                action="reload",
                status=400,
                code="invalid_config",
                message=f"config reload from {self.config_path} refused: the running config is kept",
                details={"errors": errors[:50]},
                trigger="reload",
            )
        )

    def reload(self) -> bool:
        """Re-read the config file. An invalid file is refused and the running config is kept."""
        if self.config_path is None:
            log.warning("reload requested but no config file was given")
            return False
        try:
            settings = load_settings(self.config_path)
            credentials = self._credentials(settings)
            self._check_tls(settings)
        except ConfigError as exc:
            self._refuse_reload(exc.errors)
            return False
        except AuthConfigError as exc:
            self._refuse_reload(str(exc).splitlines())
            return False
        except TLSError as exc:
            self._refuse_reload(list(exc.errors))  # the running certificates stay too
            return False
        if self.workers is not None:
            self.workers.reload_tls(settings)
        old = self.settings
        moved = settings.listen != old.listen or settings.admin.listen != old.admin.listen
        moved = (
            moved or settings.redirect_http.listen != old.redirect_http.listen or settings.admin.tls != old.admin.tls
        )
        if moved or settings.admin.metrics_listen != old.admin.metrics_listen:
            log.warning("listen addresses changed in the config: they take effect only after a restart")
        if settings.state != self.settings.state or settings.admin.audit_log != self.settings.admin.audit_log:
            log.warning("state and audit_log settings changed in the config: they take effect only after a restart")
        self.auth.credentials = credentials
        self.settings = settings
        if self.fleet is not None:  # the routing part of a reload is a fleet change like any other
            self.fleet.submit(partial(self.controller.reload, settings), f"config reload from {self.config_path}")
            return True
        snap = self.controller.reload(settings)
        log.info("config reloaded from %s (generation %d)", self.config_path, snap.generation)
        return True

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's postrotate): every process reopens its access log file."""
        self.server.reopen_logs()
        if self.workers is not None:
            self.workers.reopen_logs()

    async def stop(self, timeout: float | None = None) -> int:
        """Graceful stop: stop accepting, finish in-flight requests within the drain timeout."""
        timeout = self.settings.drain_timeout if timeout is None else timeout
        if self.workers is not None:
            await self.workers.close_listeners(timeout)
        self.server.close_listener()
        log.info("stopping: draining in-flight requests (up to %.1fs)", timeout)
        if self.workers is not None:
            await self.workers.wait_exit(timeout)
        cut = await self.server.shutdown(timeout)
        self.controller.drainer.cancel_all()
        if self._ticket_task is not None:
            self._ticket_task.cancel()
        await self.analyzer.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await self.promql.stop()
        await self.health.stop()
        if self.mirror is not None:
            self.server.shadow_to(None)
            await self.mirror.close()
        for pool in list(self.registry.pools.values()):
            pool.retire()
            pool.cut_off()
        for runner in (self._admin_runner, self._metrics_runner):  # up until now: scrapes see the drain
            if runner is not None:
                await runner.cleanup()
        self.stopped.set()
        return cut


async def serve(settings: Settings, config_path: str | Path | None, *, reset_state: bool = False) -> int:
    # Signal handlers come first: a SIGHUP or SIGTERM during start-up (a supervisor reloading
    # early) must not kill the process with the default action. A reload asked for while
    # starting runs once start-up is done; a stop asked for while starting stops right after it.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_asked = asyncio.Event()
    reopen_asked = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    loop.add_signal_handler(signal.SIGUSR1, reopen_asked.set)  # its default action would end the process
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    soft, hard = raise_nofile()
    log.info("open-file limit %d (hard %d): at most about %d concurrent connections", soft, hard, soft - 64)
    # Running the source when a compiled build was expected costs about a third more CPU per request.
    expected = native.mode == "compiled" or native.pure_requested()
    log.log(logging.INFO if expected else logging.WARNING, "%s", native.describe())
    workers = settings.workers or os.cpu_count() or 1
    try:
        app = Slotswitch(settings, config_path=config_path, workers=workers, reset_state=reset_state)
        await app.start()
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    loop.add_signal_handler(signal.SIGUSR1, app.reopen_logs)
    if reopen_asked.is_set():
        app.reopen_logs()
    if reload_asked.is_set():
        app.reload()
    await stop.wait()
    await app.stop()
    return 0


def run(settings: Settings, config_path: str | Path | None, *, reset_state: bool = False) -> int:
    import uvloop

    configure_logging(settings.log_level)
    return uvloop.run(serve(settings, config_path, reset_state=reset_state))
