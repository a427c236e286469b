"""The compose demo (deploy/compose), checked offline: every file a service references exists; ports,
service names, tokens, secret files and metric names agree between its slotswitch config and config/
(Prometheus, Alertmanager, Grafana); the config passes `slotswitch check-config`; and, when installed,
check-jsonschema (the compose spec), promtool and amtool. tests/test_compose_stack.py runs the stack.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.release.promql import render as render_promql
from proxy.settings.model import Settings
from proxy.settings.types import parse_duration
from tests.shipping_util import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    CONFIG,
    METRIC_RE,
    NOT_METRICS,
    RULES,
    binds,
    compose,
    compose_settings,
    exported_series,
    host_path,
    need,
    ports_of,
    run,
    service,
    yaml_file,
)


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
        expr = render_promql(check.query, slot, settings.promql.window)
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
