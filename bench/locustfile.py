"""Mixed traffic through slotswitch while switches and ramps happen: every answer must be right.

Run through bench/run_locust.py (starts the demo apps and slotswitch with 2 workers, runs this
headless, tears down, exits non-zero on any failure), or by hand against a running demo:

    SLOTSWITCH_ADMIN=http://127.0.0.1:9901 locust -f bench/locustfile.py --headless \\
        -u 50 -r 10 -t 60s --host http://127.0.0.1:8080

Traffic (each user picks tasks by weight, 50-300 ms apart):
- GET /                               "v1" from blue or "v2" from green, matching X-App and the slot header
- POST /echo, bodies of 0 B .. 1 MiB  the app's sha256 and length of what it received must match what was sent
- GET /stream?chunks=20&size=1024     chunked; 20 KiB, chunk i filled with the letter "a" + i
- GET /download?bytes=1048576         1 MiB with Content-Length; sha256 checked
`KeepAliveUser` reuses its connections (requests.Session pool); `NewConnectionUser` sends
`Connection: close`, so every request of it opens a new TCP connection to the proxy.

Meanwhile one background greenlet drives the admin API (SLOTSWITCH_ADMIN) every
SLOTSWITCH_CYCLE_SECONDS (default 3): switch to the other slot, switch back, then ramp to the other
slot with steps 25, 50, 100 and promote step by step until it is active; repeat. Admin calls appear
in the stats as type ADMIN; a refused or failed call is a failure. At the end the failure count is
printed and the exit code is 1 if any request failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from typing import Any

import gevent
import requests
from locust import HttpUser, between, events, task
from locust.env import Environment

SLOT_HEADER = os.environ.get("SLOTSWITCH_SLOT_HEADER", "X-Slotswitch-Slot")
ADMIN = os.environ.get("SLOTSWITCH_ADMIN", "")
CYCLE_SECONDS = float(os.environ.get("SLOTSWITCH_CYCLE_SECONDS", "3"))
BODIES = {"v1\n": "blue", "v2\n": "green"}
ECHO_SIZES = (0, 100, 1024, 16 * 1024, 256 * 1024, 1024 * 1024)
ECHO_WEIGHTS = (2, 4, 4, 3, 2, 1)
STREAM_BODY = b"".join(bytes([0x61 + i % 26]) * 1024 for i in range(20))
DOWNLOAD_BYTES = 1 << 20
DOWNLOAD_SHA256 = hashlib.sha256((bytes(range(256)) * 256 * 16)[:DOWNLOAD_BYTES]).hexdigest()

ADMIN_LOG: dict[str, Any] = {"switch": 0, "ramp": 0, "promote": 0, "refused": 0, "judge": 0, "slots_seen": {}}


def check_slot(resp: Any) -> str | None:
    """The app that answered (X-App) must be the slot the proxy says it routed to."""
    app = resp.headers.get("X-App")
    slot = resp.headers.get(SLOT_HEADER)
    if app not in ("blue", "green"):
        return f"X-App {app!r}"
    if slot is not None and slot != app:
        return f"{SLOT_HEADER} {slot!r} but X-App {app!r}"
    seen = ADMIN_LOG["slots_seen"]
    seen[app] = seen.get(app, 0) + 1
    return None


class Mixed(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.3)
    headers: dict[str, str] = {}

    @task(10)
    def index(self) -> None:
        with self.client.get("/", headers=self.headers, catch_response=True, name="GET /") as resp:
            problem = check_slot(resp) if resp.status_code == 200 else f"status {resp.status_code}"
            if problem is None and BODIES.get(resp.text) != resp.headers.get("X-App"):
                problem = f"body {resp.text[:20]!r} from X-App {resp.headers.get('X-App')!r}"
            if problem:
                resp.failure(problem)

    @task(4)
    def echo(self) -> None:
        size = random.choices(ECHO_SIZES, ECHO_WEIGHTS)[0]
        body = os.urandom(size)
        name = f"POST /echo {size} B"
        with self.client.post("/echo", data=body, headers=self.headers, catch_response=True, name=name) as resp:
            problem = check_slot(resp) if resp.status_code == 200 else f"status {resp.status_code}"
            if problem is None:
                try:
                    got = resp.json()
                except ValueError:
                    got = {}
                if got.get("body_len") != size or got.get("body_sha256") != hashlib.sha256(body).hexdigest():
                    problem = f"echo saw {got.get('body_len')} bytes, sha {str(got.get('body_sha256'))[:12]}"
            if problem:
                resp.failure(problem)

    @task(3)
    def stream(self) -> None:
        url = "/stream?chunks=20&size=1024"
        with self.client.get(url, headers=self.headers, catch_response=True, name="GET /stream 20x1KiB") as resp:
            problem = check_slot(resp) if resp.status_code == 200 else f"status {resp.status_code}"
            if problem is None and resp.content != STREAM_BODY:
                problem = f"stream body {len(resp.content)} bytes, not the expected {len(STREAM_BODY)}"
            if problem:
                resp.failure(problem)

    @task(1)
    def download(self) -> None:
        url = f"/download?bytes={DOWNLOAD_BYTES}"
        with self.client.get(url, headers=self.headers, catch_response=True, name="GET /download 1MiB") as resp:
            problem = check_slot(resp) if resp.status_code == 200 else f"status {resp.status_code}"
            if problem is None and (
                len(resp.content) != DOWNLOAD_BYTES or hashlib.sha256(resp.content).hexdigest() != DOWNLOAD_SHA256
            ):
                problem = f"download {len(resp.content)} bytes, sha256 mismatch or short"
            if problem:
                resp.failure(problem)


class KeepAliveUser(Mixed):
    """A client that keeps its connections open (requests.Session reuses them)."""

    weight = 3


class NewConnectionUser(Mixed):
    """A client that opens a new connection per request (Connection: close)."""

    weight = 1
    headers = {"Connection": "close"}


# -- the admin cycle ------------------------------------------------------------------------


class Admin:
    def __init__(self, env: Environment, base: str) -> None:
        self.env = env
        self.base = base.rstrip("/")
        self.session = requests.Session()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One admin call, recorded as an ADMIN request; returns the JSON answer, None on failure."""
        started = time.perf_counter()
        exc: Exception | None = None
        data: dict[str, Any] | None = None
        length = 0
        try:
            resp = self.session.request(method, self.base + path, json=body, timeout=30)
            length = len(resp.content)
            if resp.status_code != 200:
                exc = RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:300]}")
            else:
                data = resp.json()
        except (requests.RequestException, ValueError) as err:
            exc = err
        self.env.events.request.fire(
            request_type="ADMIN",
            name=f"{method} {path}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context={},
            exception=exc,
        )
        if exc is not None:
            print(f"admin call failed: {exc}", flush=True)
        return data

    def status(self) -> dict[str, Any] | None:
        return self.call("GET", "/v1/status")

    def judged(self, since: float) -> bool:
        """Whether something other than this script (the rollback judge, health failover) changed the
        routing state since `since` (epoch seconds)."""
        last = (self.status() or {}).get("last_change") or {}
        return last.get("trigger") not in (None, "api") and float(last.get("at") or 0) >= since

    def step(self, method: str, path: str, body: dict[str, Any] | None, kind: str) -> bool:
        started = time.time()
        if self.call(method, path, body) is not None:
            ADMIN_LOG[kind] += 1
            return True
        if self.judged(started - CYCLE_SECONDS):
            ADMIN_LOG["judge"] += 1  # the rollback judge acted meanwhile: start the cycle again
        ADMIN_LOG["refused"] += 1
        return False

    def cycle(self) -> None:
        reason = {"reason": "locust mixed-traffic cycle"}
        while True:
            status = self.status()
            if status is None:
                gevent.sleep(CYCLE_SECONDS)
                continue
            if status.get("ramp"):  # left over (e.g. the judge paused it): finish it
                self.step("POST", "/v1/promote", reason, "promote")
                gevent.sleep(CYCLE_SECONDS)
                continue
            here = status["active"]
            other = "green" if here == "blue" else "blue"
            for target in (other, here):
                if not self.step("POST", "/v1/switch", {"slot": target, **reason}, "switch"):
                    break
                gevent.sleep(CYCLE_SECONDS)
            else:
                ramp = {"slot": other, "steps": [25, 50, 100], "interval": "10m", **reason}
                if self.step("POST", "/v1/ramp", ramp, "ramp"):
                    for _ in range(2):  # 25 -> 50, then 50 -> 100 (the target becomes active)
                        gevent.sleep(CYCLE_SECONDS)
                        if not self.step("POST", "/v1/promote", reason, "promote"):
                            break
            gevent.sleep(CYCLE_SECONDS)


_cycler: list[gevent.Greenlet] = []


@events.test_start.add_listener
def _start_cycle(environment: Environment, **_: Any) -> None:
    if not ADMIN:
        print("SLOTSWITCH_ADMIN is not set: no switches or ramps during this run", flush=True)
        return
    _cycler.append(gevent.spawn(Admin(environment, ADMIN).cycle))


@events.test_stopping.add_listener
def _stop_cycle(**_: Any) -> None:
    for greenlet in _cycler:
        greenlet.kill(block=False)


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    total = environment.stats.total
    print(
        f"\nRESULT requests={total.num_requests} failures={total.num_failures} "
        f"admin={json.dumps(ADMIN_LOG, sort_keys=True)}",
        flush=True,
    )
    for err in environment.stats.errors.values():
        print(f"  {err.occurrences}x {err.method} {err.name}: {err.error}", flush=True)
    if total.num_failures:
        environment.process_exit_code = 1
