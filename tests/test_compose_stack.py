"""The compose demo run without Docker: the stack's own slotswitch config, sample apps, tokens and
traffic script on loopback (compose paths, host names and ports mapped), with the image's HEALTHCHECK
command against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from tests.procutil import ProxyProcess, track, write_config
from tests.shipping_util import (
    COMPOSE_DIR,
    METRIC_RE,
    NOT_METRICS,
    ROOT,
    RULES,
    TLS_ONLY_METRICS,
    compose,
    compose_settings,
    free_port,
    healthcheck_command,
    host_path,
    run,
    service,
    yaml_file,
)


@contextlib.asynccontextmanager
async def demo_apps() -> AsyncIterator[dict[tuple[str, int], int]]:
    """The compose blue and green services' commands, run here on free loopback ports.
    Yields (service, port in compose) -> port here."""
    procs: list[asyncio.subprocess.Process] = []
    ports: dict[tuple[str, int], int] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for name in ("blue", "green"):
            app = service(name)
            script = host_path(app, app["entrypoint"][-1])
            args = list(app["command"])
            at = args.index("--port") + 1
            ports[(name, int(args[at]))] = port = free_port()
            args[at] = str(port)
            procs.append(
                track(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(script),
                        *args,
                        "--host",
                        "127.0.0.1",
                        env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            )
        for (name, original), port in ports.items():
            test = [sys.executable if a == "python" else a for a in service(name)["healthcheck"]["test"][1:]]
            test = [a.replace(f"127.0.0.1:{original}", f"127.0.0.1:{port}") for a in test]
            for _ in range(100):
                done = await asyncio.create_subprocess_exec(*test, stderr=asyncio.subprocess.DEVNULL)
                if await done.wait() == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{name}: its compose healthcheck never passed")
        yield ports
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


def loopback_config(ports: dict[tuple[str, int], int], tmp_path: Path) -> Path:
    """The compose slotswitch config with the compose names, ports and container paths mapped here."""
    svc = service("slotswitch")
    source = host_path(svc, "/etc/slotswitch/config.yaml")
    assert source is not None
    data = yaml_file(source)
    data["listen"] = "127.0.0.1:0"
    data["admin"]["listen"] = "127.0.0.1:0"
    for slot in data["slots"].values():
        urls = []
        for url in slot["upstreams"]:
            parts = urlsplit(url)
            urls.append(f"http://127.0.0.1:{ports[(str(parts.hostname), int(parts.port or 80))]}")
        slot["upstreams"] = urls
    for token in data["admin"]["tokens"]:
        token["token_file"] = str(host_path(svc, token["token_file"]))
    data["preview"]["secret_file"] = str(host_path(svc, data["preview"]["secret_file"]))
    data["state"]["file"] = str(tmp_path / "state.json")
    data["admin"]["audit_log"] = str(tmp_path / "audit.jsonl")
    data["promql"]["url"] = "http://127.0.0.1:9"  # nothing there: PromQL results are inconclusive
    return write_config(tmp_path / "slotswitch.yaml", data)


def secret(name: str) -> str:
    return (COMPOSE_DIR / str(compose()["secrets"][name]["file"])).read_text(encoding="ascii").strip()


async def test_compose_stack_serves_switches_and_rolls_back_on_an_alert(tmp_path: Path) -> None:
    """The stack's own config, apps, tokens and traffic script, on loopback: the image's health check
    passes, Prometheus's token reads /metrics, the operator switches, Alertmanager's alert rolls back."""
    settings = compose_settings()
    async with demo_apps() as ports:
        proc = await ProxyProcess.spawn(loopback_config(ports, tmp_path))
        try:
            await proc.started()
            admin = f"http://127.0.0.1:{proc.admin_port}"
            proxy = f"http://127.0.0.1:{proc.proxy_port}/"
            env = {**os.environ, "SLOTSWITCH_HEALTHCHECK_URL": f"{admin}/v1/health"}
            check = [sys.executable if a == "python" else a for a in healthcheck_command()]
            assert run(*check, env=env).returncode == 0, "the image's HEALTHCHECK command"
            env["SLOTSWITCH_HEALTHCHECK_URL"] = f"http://127.0.0.1:{free_port()}/v1/health"
            assert run(*check, env=env).returncode != 0

            def bearer(name: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {secret(name)}"}

            async with aiohttp.ClientSession() as http:
                async with http.get(proxy) as resp:
                    assert (resp.status, await resp.text()) == (200, "v1\n")
                    assert resp.headers[settings.slot_header] == "blue"
                preview = {settings.preview.header: secret("preview_secret")}
                async with http.get(proxy, headers=preview) as resp:
                    assert await resp.text() == "v2\n", "the preview secret reaches the idle slot"

                async with http.get(f"{admin}/metrics") as resp:
                    assert resp.status == 401
                # the demo's listener is plain HTTP: no certificate, no expiry series
                wanted = set(METRIC_RE.findall(RULES.read_text(encoding="utf-8"))) - NOT_METRICS - TLS_ONLY_METRICS
                for _ in range(50):  # the workers report their counts to the main process every few ms
                    async with http.get(f"{admin}/metrics", headers=bearer("prometheus_token")) as resp:
                        assert resp.status == 200
                        exposed = set(re.findall(r"^(slotswitch_\w+)[{ ]", await resp.text(), re.M))
                    if wanted <= exposed:
                        break
                    await asyncio.sleep(0.1)
                assert wanted <= exposed, wanted - exposed
                async with http.post(f"{admin}/v1/rollback", headers=bearer("prometheus_token")) as resp:
                    assert resp.status == 403, "Prometheus's token is a viewer"

                body = {"slot": "green", "reason": "compose test"}
                async with http.post(f"{admin}/v1/switch", json=body, headers=bearer("operator_token")) as resp:
                    assert resp.status == 200, await resp.text()
                async with http.get(proxy) as resp:
                    assert await resp.text() == "v2\n"

                rules = [r for g in yaml_file(RULES)["groups"] for r in g["rules"] if "alert" in r]
                (rule,) = [r for r in rules if r["labels"].get(settings.alerts.rollback_label)]
                alert = {
                    "status": "firing",
                    "labels": {"alertname": rule["alert"], "slot": "green", **rule["labels"]},
                    "annotations": {"summary": "compose test"},
                    "startsAt": "2026-01-01T00:00:00Z",
                    "fingerprint": "composetest",
                }
                payload = {"version": "4", "status": "firing", "receiver": "slotswitch-rollback", "alerts": [alert]}
                async with http.post(f"{admin}/v1/alerts", json=payload, headers=bearer("alertmanager_token")) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["rolled_back"] is True
            traffic = service("traffic")
            script = host_path(traffic, traffic["entrypoint"][-1])
            done = run(sys.executable, str(script), "--url", proxy, "--rate", "200", "--count", "20")
            assert done.returncode == 0, done.stderr
            assert "blue 200 x20" in done.stdout, done.stdout

            # The walk-through's automatic rollback: switch to green, break part of it, and let the
            # demo's traffic (at the compose rate) show the judge a worse slot.
            async with aiohttp.ClientSession() as http:
                # The alert marked green failed: a second try is refused unless redeployed or forced.
                body = {"slot": "green", "reason": "second try"}
                async with http.post(f"{admin}/v1/switch", json=body, headers=bearer("operator_token")) as resp:
                    assert resp.status == 409, await resp.text()
                    assert "failed analysis" in (await resp.json())["error"]["message"]
                body = {"slot": "green", "reason": "second try", "force": True}
                async with http.post(f"{admin}/v1/switch", json=body, headers=bearer("operator_token")) as resp:
                    assert resp.status == 200, await resp.text()
                green = f"http://127.0.0.1:{next(port for (name, _), port in ports.items() if name == 'green')}"
                async with http.post(f"{green}/admin/errors?percent=30") as resp:
                    assert resp.status == 200
                rate = traffic["command"][traffic["command"].index("--rate") + 1]
                done = run(sys.executable, str(script), "--url", proxy, "--rate", rate, "--count", str(4 * int(rate)))
                assert "green 500" in done.stdout, done.stdout
                async with http.get(f"{admin}/v1/status", headers=bearer("operator_token")) as resp:
                    status = await resp.json()
                assert status["active"] == "blue", status["last_change"]
                assert status["last_change"]["trigger"] == "judge", status["last_change"]
            proc.signal(signal.SIGTERM)
            assert await proc.wait_exit() == 0, proc.output
        finally:
            await proc.close()
