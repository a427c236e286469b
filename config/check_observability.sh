#!/usr/bin/env bash
# Offline checks of the observability files in config/ (no Prometheus, Alertmanager or Grafana
# server is started). Needs promtool (Debian: prometheus) and, for the Alertmanager part, amtool
# (Debian: prometheus-alertmanager):
#     apt-get install -y --no-install-recommends prometheus prometheus-alertmanager
# Usage: bash config/check_observability.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

run() { printf '+ %s\n' "$*"; "$@"; }

command -v promtool >/dev/null || { echo "error: promtool not found (apt-get install prometheus)" >&2; exit 1; }
run promtool check config prometheus/prometheus.yml
run promtool check rules prometheus/rules/slotswitch.rules.yml
run promtool test rules prometheus/rules/slotswitch.rules_test.yml
python3 -m json.tool grafana/dashboards/slotswitch.json >/dev/null && echo "grafana/dashboards/slotswitch.json: valid JSON"

if command -v amtool >/dev/null; then
    run amtool check-config alertmanager/alertmanager.yml
    run amtool config routes test --config.file=alertmanager/alertmanager.yml \
        alertname=SlotswitchNewSlotHighErrorRate 'slotswitch_rollback="true"' 2>/dev/null
else
    echo "amtool not found (apt-get install prometheus-alertmanager): Alertmanager config not checked" >&2
fi
echo "observability files OK (the dashboard's PromQL is checked by tests/test_observability_files.py)"
