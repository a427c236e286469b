"""Checks of the operator-facing observability files under config/: the Grafana dashboard and its
provisioning, the Prometheus config and rules, the Alertmanager config.

No Grafana is needed. The PromQL checks need promtool (Debian package `prometheus`) and the
Alertmanager checks amtool (Debian package `prometheus-alertmanager`); without them those tests
are skipped with the install command as the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
DASHBOARD = CONFIG / "grafana" / "dashboards" / "slotswitch.json"
DS_PROVISIONING = CONFIG / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASH_PROVISIONING = CONFIG / "grafana" / "provisioning" / "dashboards" / "slotswitch.yaml"
PROMETHEUS_YML = CONFIG / "prometheus" / "prometheus.yml"
RULES = CONFIG / "prometheus" / "rules" / "slotswitch.rules.yml"
RULES_TEST = CONFIG / "prometheus" / "rules" / "slotswitch.rules_test.yml"
ALERTMANAGER_YML = CONFIG / "alertmanager" / "alertmanager.yml"

# What the proxy exports on the admin listener's /metrics (name -> type).
EXPORTED: dict[str, str] = {
    "slotswitch_requests_total": "counter",
    "slotswitch_request_duration_seconds": "histogram",
    "slotswitch_upstream_errors_total": "counter",
    "slotswitch_in_flight_requests": "gauge",
    "slotswitch_slot_weight_ratio": "gauge",
    "slotswitch_slot_active": "gauge",
    "slotswitch_switches_total": "counter",
    "slotswitch_rollbacks_total": "counter",
    "slotswitch_drain_duration_seconds": "histogram",
    "slotswitch_upstream_healthy": "gauge",
    "slotswitch_state_generation": "gauge",
    "slotswitch_state_store_up": "gauge",
    "slotswitch_build_info": "gauge",
    "slotswitch_tls_certificate_expiry_seconds": "gauge",  # only with tls on the listener
    "slotswitch_tls_handshake_failures_total": "counter",
    "slotswitch_shadow_requests_total": "counter",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"(?<![\w:])slotswitch_[a-z_]+")
RECORDED_RE = re.compile(r"(?<![\w:])slotswitch:[a-z0-9_:]+")

DS_UID = "${DS_PROMETHEUS}"
REQUIRED_ALERTS = {
    "SlotswitchNewSlotHighErrorRate",
    "SlotswitchHighLatencyP99",
    "SlotswitchReplicasDisagree",
    "SlotswitchStateStoreDown",
    "SlotswitchUpstreamDown",
    "SlotswitchRollbackHappened",
}
PROMTOOL_MISSING = "promtool not found on PATH: install it with `apt-get install -y --no-install-recommends prometheus`"
AMTOOL_MISSING = (
    "amtool not found on PATH: install it with `apt-get install -y --no-install-recommends prometheus-alertmanager`"
)


# ------------------------------------------------------------------------------------------ helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(RULES)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard["panels"]) if p.get("type") != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus annotation query."""
    exprs = []
    for panel in data_panels(dashboard):
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r} target {target.get('refId')}", target["expr"]))
    for ann in dashboard["annotations"]["list"]:
        if ann.get("builtIn"):
            continue
        exprs.append((f"annotation {ann['name']!r}", ann["expr"]))
        if "target" in ann:
            exprs.append((f"annotation {ann['name']!r} target", ann["target"]["expr"]))
    return exprs


def rule_list(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def alerts_by_name(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rule_list(rules) if "alert" in rule}


def base_metric(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and EXPORTED.get(stem) == "histogram":
            return stem
    return name


def unknown_metrics(exprs: list[tuple[str, str]]) -> list[str]:
    problems = []
    for where, expr in exprs:
        for name in METRIC_RE.findall(expr):
            if base_metric(name) not in EXPORTED:
                problems.append(f"{where}: {name}")
    return problems


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables so promtool can parse the query."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?", "5m", expr)
    expr = re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)", ".*", expr)  # template variables sit in regex matchers
    assert "$" not in expr, expr
    return expr


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(PROMTOOL_MISSING)
    return path


def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.skip(AMTOOL_MISSING)
    return path


# ----------------------------------------------------------------------------------------- dashboard


def test_dashboard_identity_for_file_provisioning_and_import(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "slotswitch"
    assert "id" in dashboard
    assert dashboard["id"] is None
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_panel_has_prometheus_targets(dashboard: dict[str, Any]) -> None:
    panels = data_panels(dashboard)
    assert len(panels) >= 10
    for panel in panels:
        assert panel.get("title"), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_UID}, panel["title"]
        targets = panel.get("targets")
        assert targets, f"panel {panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has a target without expr"
            assert target["datasource"]["uid"] == DS_UID, panel["title"]


def test_panel_ids_unique_and_layout_does_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_every_exported_signal(dashboard: dict[str, Any]) -> None:
    used = {base_metric(n) for _, expr in dashboard_exprs(dashboard) for n in METRIC_RE.findall(expr)}
    # build_info and state_store_up are shown too, but everything the brief asks for must be there
    assert set(EXPORTED) <= used, f"not on the dashboard: {sorted(set(EXPORTED) - used)}"
    exprs = [expr for _, expr in dashboard_exprs(dashboard)]
    for q in ("0.5", "0.9", "0.99"):
        assert any(
            f"histogram_quantile({q}," in e and "rate(slotswitch_request_duration_seconds_bucket" in e for e in exprs
        ), f"no p{q} latency query"
    assert any('code=~"5.."' in e for e in exprs), "no 5xx ratio query"
    assert any("count_values" in e and "slotswitch_state_generation" in e for e in exprs)
    types = {p["type"] for p in data_panels(dashboard)}
    assert {"stat", "timeseries", "state-timeline"} <= types


def test_switches_and_rollbacks_are_annotations(dashboard: dict[str, Any]) -> None:
    annotations = dashboard["annotations"]["list"]
    assert any(a.get("builtIn") == 1 for a in annotations)
    prom = {a["name"]: a for a in annotations if not a.get("builtIn")}
    assert "slotswitch_switches_total" in prom["Switches"]["expr"]
    assert "slotswitch_rollbacks_total" in prom["Rollbacks"]["expr"]
    for ann in prom.values():
        assert ann["datasource"] == {"type": "prometheus", "uid": DS_UID}
        assert ann["enable"] is True
        assert ann["target"]["expr"] == ann["expr"]
        assert ann["step"] == "30s"
        assert "offset 30s" in ann["expr"]


def test_switch_annotation_counts_each_event_once_including_the_first(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    """The exporter emits a trigger only once it has happened, so its series is born at 1: the
    annotation must mark that first switch, and mark each switch in exactly one 30s step."""
    tool = promtool()
    (ann,) = [a for a in dashboard["annotations"]["list"] if a.get("name") == "Switches"]
    series = 'slotswitch_switches_total{{job="slotswitch",instance="127.0.0.1:9901",trigger="{}"}}'
    test = {
        "rule_files": ["empty.rules.yml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "30s",
                "input_series": [
                    {"series": series.format("api"), "values": "_x3 1x10"},  # first switch: born at 1m30s
                    {"series": series.format("judge"), "values": "2x6 3x6"},  # 2 -> 3 at 3m30s
                ],
                "promql_expr_test": [
                    {"expr": ann["expr"], "eval_time": "1m", "exp_samples": []},
                    {
                        "expr": ann["expr"],
                        "eval_time": "1m30s",
                        "exp_samples": [{"labels": '{trigger="api"}', "value": 1}],
                    },
                    {"expr": ann["expr"], "eval_time": "2m", "exp_samples": []},
                    {"expr": ann["expr"], "eval_time": "3m", "exp_samples": []},
                    {
                        "expr": ann["expr"],
                        "eval_time": "3m30s",
                        "exp_samples": [{"labels": '{trigger="judge"}', "value": 1}],
                    },
                    {"expr": ann["expr"], "eval_time": "4m", "exp_samples": []},
                ],
            }
        ],
    }
    (tmp_path / "empty.rules.yml").write_text("groups: []\n", encoding="utf-8")
    path = tmp_path / "annotation_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    result = run_tool(tool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_metric_names_are_exported(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append((f"variable {var['name']}", var["definition"]))
    assert sum(len(METRIC_RE.findall(e)) for _, e in exprs) > 20
    assert unknown_metrics(exprs) == []


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    tool = promtool()
    exprs = dashboard_exprs(dashboard)
    rule_file = {
        "groups": [
            {
                "name": "dashboard_syntax_check",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(expr)}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rule_file, sort_keys=False), encoding="utf-8")
    result = run_tool(tool, "check", "rules", str(path))
    where = "\n".join(f"dashboard:expr_{i} = {w}" for i, (w, _) in enumerate(exprs))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{where}"
    assert f"{len(exprs)} rules found" in result.stdout


def test_grafana_to_promql_substitutes_variables() -> None:
    assert grafana_to_promql('rate(x{slot=~"$slot"}[$__rate_interval])') == 'rate(x{slot=~".*"}[5m])'
    assert grafana_to_promql('increase(x{a=~"${a:regex}"}[${__range}])') == 'increase(x{a=~".*"}[5m])'


# -------------------------------------------------------------------------------- grafana provisioning


def test_grafana_provisioning_files() -> None:
    ds = load_yaml(DS_PROVISIONING)
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"].startswith("http")
    dash = load_yaml(DASH_PROVISIONING)
    assert dash["apiVersion"] == 1
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


# ---------------------------------------------------------------------------------------- prometheus


def test_prometheus_yml_scrapes_slotswitch() -> None:
    conf = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    job = jobs["slotswitch"]
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:9901"]
    am_targets = [t for am in conf["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["127.0.0.1:9093"]
    rule_files = [(PROMETHEUS_YML.parent / f).resolve() for f in conf["rule_files"]]
    assert RULES.resolve() in rule_files
    assert all(f.exists() for f in rule_files)


def test_rules_reference_only_exported_metrics(rules: dict[str, Any]) -> None:
    exprs = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rule_list(rules)]
    assert sum(len(METRIC_RE.findall(e)) for _, e in exprs) >= 8
    assert unknown_metrics(exprs) == []
    # a typo in a recording rule's name would make an alert silently match nothing
    recorded = {rule["record"] for rule in rule_list(rules) if "record" in rule}
    for where, expr in exprs:
        for name in RECORDED_RE.findall(expr):
            assert name in recorded, f"{where} uses {name}, which no rule records"


def test_alerts_present_with_labels_and_readable_annotations(rules: dict[str, Any]) -> None:
    alerts = alerts_by_name(rules)
    assert set(alerts) >= REQUIRED_ALERTS
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert alert["annotations"]["summary"], name
        for text in alert["annotations"].values():
            assert not re.search(r"\{\{\s*\$value\s*\}\}", text), f"{name}: format $value (printf/humanize)"
    rollback = {name for name, a in alerts.items() if a["labels"].get("slotswitch_rollback") == "true"}
    assert rollback == {"SlotswitchNewSlotHighErrorRate"}
    assert alerts["SlotswitchNewSlotHighErrorRate"]["for"] == "1m"
    assert alerts["SlotswitchRollbackHappened"]["labels"]["severity"] == "info"


def test_promtool_check_config_and_rules() -> None:
    tool = promtool()
    result = run_tool(tool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_tool(tool, "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    tool = promtool()
    tests = load_yaml(RULES_TEST)
    names = [t["name"] for t in tests["tests"]]
    assert any("fires" in n and "error rate" in n for n in names)
    assert any("does not fire" in n for n in names)
    assert any("replicas" in n for n in names)
    result = run_tool(tool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -------------------------------------------------------------------------------------- alertmanager


def test_alertmanager_routes_rollback_alerts_to_slotswitch() -> None:
    conf = load_yaml(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in conf["receivers"]}
    rollback_routes = [r for r in conf["route"]["routes"] if 'slotswitch_rollback="true"' in r.get("matchers", [])]
    assert len(rollback_routes) == 1
    (hook,) = receivers[rollback_routes[0]["receiver"]]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9901/v1/alerts"
    assert hook["send_resolved"] is True
    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert auth["credentials_file"] == "/etc/slotswitch/alert-token"
    assert "credentials" not in auth


def test_amtool_check_config_and_routing() -> None:
    tool = amtool()
    result = run_tool(tool, "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    route = [tool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}"]
    result = run_tool(*route, "alertname=SlotswitchNewSlotHighErrorRate", 'slotswitch_rollback="true"', "slot=green")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r.strip() for r in result.stdout.strip().split(",")} == {"slotswitch-rollback", "default"}
    result = run_tool(*route, "alertname=SlotswitchUpstreamDown")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "default"
