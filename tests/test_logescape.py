"""Logs cannot be forged (issue 19 #6): every line goes through proxy.logtext's escaping, as installed
by proxy.process.runtime.log_handler; malformed admin requests are a 4xx and an INFO line."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest

from proxy.logtext import escape
from proxy.process.host import log_handler
from proxy.process.runtime import Slotswitch
from tests.conftest import StartProxy
from tests.test_admin_api import admin, assert_error
from tests.test_alerts import alert, payload, post


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the process's own handler writes, for the duration of the test."""
    out = io.StringIO()
    handler = log_handler(out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def test_escape_writes_control_characters_and_backslashes_as_escapes() -> None:
    assert escape("a\r\nb\x00c\x1b[31m\x7f\x85\\d\u2028é") == "a\\x0d\\x0ab\\x00c\\x1b[31m\\x7f\\x85\\x5cd\\u2028é"
    assert escape("plain text: 1.2.3.4 GET /x") == "plain text: 1.2.3.4 GET /x"


def test_a_traceback_keeps_its_lines_while_the_message_is_escaped(logged: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("slotswitch.test").exception("failed on %s", "x\ny")
    text = logged.getvalue()
    assert "failed on x\\x0ay" in text
    assert "\nTraceback (most recent call last):\n" in text and "ValueError: boom" in text


async def test_a_crlf_in_an_alert_label_forges_no_line(start_proxy: StartProxy, logged: io.StringIO) -> None:
    app = await start_proxy()
    forged = "\r\n2026-01-01 00:00:00,000 WARNING slotswitch.control: switch by admin"
    async with admin(app) as s:
        code, answer = await post(s, payload(alert(alertname="Evil" + forged, slotswitch_rollback="no")))
        assert code == 200, answer
    lines = logged.getvalue().splitlines()
    assert any("Evil\\x0d\\x0a2026-01-01" in line for line in lines), lines
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines), lines


async def test_a_negative_count_in_an_alerts_payload_is_a_400(start_proxy: StartProxy) -> None:
    app = await start_proxy()
    async with admin(app) as s:
        code, answer = await post(s, payload(alert(), truncatedAlerts=-5))
        assert code == 400
        assert_error(answer, "invalid_payload")


async def test_a_nul_in_an_admin_request_header_is_a_400_and_an_info_line(
    proxy: Slotswitch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.admin_port)
    try:
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: h\r\nX-Bad: a\x00b\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], [
        (r.levelname, r.getMessage()) for r in caplog.records
    ]
    assert any(r.levelno == logging.INFO and "malformed admin request" in r.getMessage() for r in caplog.records)
