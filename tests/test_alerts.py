"""POST /v1/alerts, the Alertmanager webhook (payload v4), against a real in-process proxy.

The proxy runs with named tokens: "alertmanager" (operator, the webhook's bearer token) and
"dashboard" (viewer). A firing alert labelled slotswitch_rollback="true" for the slot taking new
traffic rolls back; everything else is answered 200 with the reason it was ignored.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from admin.alerts import Seen
from proxy.process.runtime import Slotswitch
from proxy.release.control import Refused
from tests.conftest import StartProxy
from tests.test_admin_api import admin, assert_error, call, status

AM_SECRET = "am-5d0c3a9e71"
VIEWER_SECRET = "view-41b7f2c0"
AM_ENV = "SLOTSWITCH_TEST_AM_TOKEN"
VIEWER_ENV = "SLOTSWITCH_TEST_ALERTS_VIEWER"
STARTS = "2024-05-01T10:00:00.000Z"


@pytest.fixture
async def secured(start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch) -> Slotswitch:
    monkeypatch.setenv(AM_ENV, AM_SECRET)
    monkeypatch.setenv(VIEWER_ENV, VIEWER_SECRET)
    tokens = [
        {"name": "alertmanager", "role": "operator", "token_env": AM_ENV},
        {"name": "dashboard", "role": "viewer", "token_env": VIEWER_ENV},
    ]
    return await start_proxy(admin={"listen": "127.0.0.1:0", "tokens": tokens})


def alert(status: str = "firing", fp: str = "a1b2c3", starts: str = STARTS, **labels: str) -> dict[str, Any]:
    base = {"alertname": "SlotswitchNewSlotHighErrorRate", "slotswitch_rollback": "true", "slot": "green"}
    merged = {k: v for k, v in {**base, **labels}.items() if v != ""}  # "" removes a label
    return {
        "status": status,
        "labels": merged,
        "annotations": {"summary": "green answers 12% 5xx", "description": "see the dashboard"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": fp,
    }


def payload(*alerts: dict[str, Any], **top: Any) -> dict[str, Any]:
    body = {
        "version": "4",
        "groupKey": '{}/{slotswitch_rollback="true"}:{alertname="SlotswitchNewSlotHighErrorRate"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "slotswitch-rollback",
        "groupLabels": {"alertname": "SlotswitchNewSlotHighErrorRate"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }
    body.update(top)
    return body


async def post(s: aiohttp.ClientSession, body: object) -> tuple[int, dict[str, Any]]:
    code, answer, _ = await call(s, "POST", "/v1/alerts", json=body)
    return code, answer


async def rollbacks_by_reason(s: aiohttp.ClientSession) -> dict[str, float]:
    """The non-zero slotswitch_rollbacks_total series, by reason."""
    async with s.get("/metrics") as r:
        text = await r.text()
    pattern = r'^slotswitch_rollbacks_total\{reason="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M) if float(m[2])}


async def test_a_firing_alert_with_the_label_rolls_back_the_ramp(secured: Slotswitch) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    async with admin(secured, AM_SECRET) as s:
        before = await status(s)
        assert before["phase"] == "ramping"
        code, answer = await post(s, payload(alert()))
        assert code == 200, answer
        assert answer == {"rolled_back": True, "ignored": [], "generation": before["generation"] + 1}
        after = await status(s)
        assert (after["phase"], after["active"], after["weights"]) == ("rolled_back", "blue", {"blue": 100, "green": 0})
        assert after["generation"] == before["generation"] + 1
        change = after["last_change"]
        assert (change["action"], change["trigger"], change["by"]) == ("rollback", "alert", "alertmanager")
        assert change["reason"] == "alert SlotswitchNewSlotHighErrorRate: green answers 12% 5xx"
        assert await rollbacks_by_reason(s) == {"alert": 1.0}
    details = secured.store.current.details
    assert details["alertname"] == "SlotswitchNewSlotHighErrorRate"
    assert details["fingerprint"] == "a1b2c3" and details["startsAt"] == STARTS
    assert details["labels"] == alert()["labels"] and details["slot"] == "green"


async def test_duplicates_are_ignored_even_in_a_later_ramp(secured: Slotswitch) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    async with admin(secured, AM_SECRET) as s:
        assert (await post(s, payload(alert())))[1]["rolled_back"] is True
        # The slot stays failed until redeployed or forced; a new ramp to it is refused.
        with pytest.raises(Refused, match="failed analysis"):
            secured.controller.ramp("green", [50, 100], 3600, actor="test")
        # Alertmanager re-sends a firing alert every repeat_interval: the same one never acts twice.
        secured.controller.ramp("green", [50, 100], 3600, actor="test", force=True)
        generation = secured.store.current.generation
        code, answer = await post(s, payload(alert()))
        assert code == 200 and answer["rolled_back"] is False
        assert len(answer["ignored"]) == 1 and "duplicate" in answer["ignored"][0], answer
        assert secured.store.current.generation == generation and secured.store.current.phase == "ramping"
        # The same rule firing again later (a new startsAt) is a new alert.
        code, answer = await post(s, payload(alert(starts="2024-05-01T11:00:00Z")))
        assert answer["rolled_back"] is True, answer
        assert await rollbacks_by_reason(s) == {"alert": 2.0}


async def test_alerts_that_do_not_qualify_are_ignored(secured: Slotswitch) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    generation = secured.store.current.generation
    alerts = [
        alert(status="resolved", fp="r1"),
        alert(fp="n1", slotswitch_rollback=""),  # no label
        alert(fp="n2", slotswitch_rollback="false"),  # another value
        alert(fp="s1", slot="blue"),  # blue is not the slot taking new traffic during the ramp
    ]
    async with admin(secured, AM_SECRET) as s:
        code, answer = await post(s, payload(*alerts))
        assert code == 200, answer
        assert answer["rolled_back"] is False
        reasons = answer["ignored"]
        assert len(reasons) == 4, reasons
        assert reasons[0].endswith("[r1]: resolved")
        assert "no slotswitch_rollback='true' label" in reasons[1] and "[n2]" in reasons[2]
        assert "slot 'blue' is not the slot taking new traffic (green)" in reasons[3]
        assert await rollbacks_by_reason(s) == {}
    assert secured.store.current.generation == generation and secured.store.current.phase == "ramping"


async def test_after_a_switch_an_alert_on_the_new_active_slot_rolls_back_once(secured: Slotswitch) -> None:
    secured.controller.switch("green", actor="test", force=True)
    async with admin(secured, AM_SECRET) as s:
        code, answer = await post(s, payload(alert(fp="w1", slot="blue")))  # blue is idle now
        assert answer["rolled_back"] is False and "not the slot taking new traffic (green)" in answer["ignored"][0]
        # one notification, two alerts: the second finds the state already rolled back (no ping-pong)
        code, answer = await post(s, payload(alert(fp="w2"), alert(fp="w3", slot="")))
        assert code == 200 and answer["rolled_back"] is True, answer
        assert len(answer["ignored"]) == 1 and "already rolled back" in answer["ignored"][0]
        assert (await status(s))["active"] == "blue"


async def test_nothing_to_roll_back_to_is_an_ignored_alert_not_an_error(secured: Slotswitch) -> None:
    async with admin(secured, AM_SECRET) as s:
        code, answer = await post(s, payload(alert(fp="x1", slot="")))
        assert code == 200 and answer["rolled_back"] is False
        assert "nothing to roll back to" in answer["ignored"][0], answer


async def test_grafana_supersets_and_alerts_without_fingerprint_are_accepted(secured: Slotswitch) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    grafana = alert()
    del grafana["fingerprint"]
    grafana.update({"values": {"B": 0.12}, "silenceURL": "http://grafana/silence", "valueString": "[ var='B' ]"})
    body = payload(grafana, orgId=1, title="[FIRING:1]", state="alerting", message="...")
    async with admin(secured, AM_SECRET) as s:
        code, answer = await post(s, body)
        assert code == 200 and answer["rolled_back"] is True, answer
    assert re.fullmatch(r"[0-9a-f]{16}", str(secured.store.current.details["fingerprint"]))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (payload(alert(), version="3"), "version"),
        (payload(alert(), version=4), "version"),
        ([payload(alert())], "JSON object"),
        ("firing", "JSON object"),
        (payload(alert(), alerts={"0": alert()}), "alerts"),
        (payload(alert(), status="pending"), "status"),
        (payload(alert(), alerts=["not an alert"]), "alerts[0]"),
        (payload({**alert(), "labels": {"severity": 3}}), "alerts[0].labels"),
        (payload({**alert(), "status": "active"}), "alerts[0].status"),
        (payload({k: v for k, v in alert().items() if k != "labels"}), "alerts[0].labels"),
        (payload(alert(), truncatedAlerts="2"), "truncatedAlerts"),
        (payload(alert(), commonLabels=[]), "commonLabels"),
        ({"status": "firing", "alerts": []}, "version"),
    ],
)
async def test_malformed_payloads_are_400_json(secured: Slotswitch, body: object, needle: str) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    generation = secured.store.current.generation
    async with admin(secured, AM_SECRET) as s:
        code, answer = await post(s, body)
        assert code == 400, answer
        assert_error(answer, answer["error"]["code"])
        assert answer["error"]["code"] in ("invalid_payload", "invalid_body"), answer
        assert needle in answer["error"]["message"], answer
    assert secured.store.current.generation == generation


async def test_not_json_and_no_body_are_400(secured: Slotswitch) -> None:
    async with admin(secured, AM_SECRET) as s:
        code, answer, _ = await call(
            s, "POST", "/v1/alerts", data=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert code == 400 and answer["error"]["code"] == "invalid_json"
        code, answer, _ = await call(s, "POST", "/v1/alerts")
        assert code == 400 and "version" in answer["error"]["message"]


async def test_the_webhook_needs_an_operator_token(secured: Slotswitch) -> None:
    secured.controller.ramp("green", [50, 100], 3600, actor="test")
    for who, expected in ((None, 401), ("wrong", 401), (VIEWER_SECRET, 403)):
        async with admin(secured, who) as s:
            code, answer = await post(s, payload(alert()))
            assert code == expected, (who, answer)
    assert secured.store.current.phase == "ramping"


async def test_custom_label_from_settings(start_proxy: StartProxy) -> None:
    app = await start_proxy(alerts={"rollback_label": "bg_action", "rollback_value": "rollback"})
    app.controller.ramp("green", [50, 100], 3600, actor="test")
    async with admin(app) as s:
        _, answer = await post(s, payload(alert()))  # slotswitch_rollback is not the label any more
        assert answer["rolled_back"] is False and "no bg_action='rollback' label" in answer["ignored"][0]
        _, answer = await post(s, payload(alert(fp="c2", bg_action="rollback")))
        assert answer["rolled_back"] is True, answer
    assert app.store.current.changed_by == "loopback"


def test_the_dedupe_memory_is_bounded_in_size_and_age() -> None:
    seen = Seen()
    for i in range(10):
        seen.add((f"fp{i}", STARTS), now=100.0 + i, size=4)
    assert len(seen) == 4 and ("fp9", STARTS) in seen and ("fp5", STARTS) not in seen
    seen.expire(now=108.5, ttl=2.0)  # fp6 (106) and fp7 (107)... are older than 2 s at 108.5 -> fp6 goes
    assert ("fp6", STARTS) not in seen and ("fp7", STARTS) in seen
    seen.expire(now=1000.0, ttl=2.0)
    assert len(seen) == 0
