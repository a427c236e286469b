"""The config validator: defaults, durations and sizes, every error with its YAML path, all at once.

`parse_settings` / `load_settings` are called directly; `slotswitch check-config` runs as a real
subprocess (the installed console script's module, `python -m proxy`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.settings.model import ConfigError, Settings, load_settings, parse_settings
from proxy.settings.types import SLOT_NAME, parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent
SLOT_RULE = f"slot names must match {SLOT_NAME.pattern}"

MINIMAL_YAML = """\
slots:
  blue:
    upstreams: ["http://127.0.0.1:5001"]
  green:
    upstreams: ["http://127.0.0.1:5002"]
active: blue
"""


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "slots": {
            "blue": {"upstreams": ["http://127.0.0.1:5001"]},
            "green": {"upstreams": ["http://127.0.0.1:5002"]},
        },
        "active": "blue",
    }
    data.update(overrides)
    return data


def errors_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def write(tmp_path: Path, text: str, name: str = "slotswitch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- valid configurations ---------------------------------------------------------------------


def test_minimal_config_gets_defaults() -> None:
    s = parse_settings(minimal())
    assert isinstance(s, Settings)
    assert s.listen == "127.0.0.1:8080"
    assert s.listen_addr == ("127.0.0.1", 8080)
    assert list(s.slots) == ["blue", "green"]
    blue = s.slots["blue"].upstreams
    assert [(u.url, u.host, u.port) for u in blue] == [("http://127.0.0.1:5001", "127.0.0.1", 5001)]
    assert s.active == "blue"
    assert s.drain_timeout == 30.0
    assert s.workers == 0  # one data-path process per CPU
    assert s.slot_header == "X-Slotswitch-Slot"
    assert s.trusted_proxies == ()
    assert (s.limits.request_line, s.limits.headers, s.limits.body) == (8192, 32768, 0)
    t = s.timeouts
    assert (t.header_read, t.body_read, t.keepalive, t.connect, t.upstream_read) == (60.0, 60.0, 75.0, 5.0, 60.0)
    assert (s.pool.max_idle, s.pool.max_connections) == (64, 1024)
    assert s.admin.listen == "127.0.0.1:9901"
    assert s.log_level == "info"


def test_load_settings_reads_yaml(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL_YAML + "log_level: DEBUG\nlisten: '[::1]:0'\n"))
    assert s.active == "blue"
    assert s.log_level == "debug"
    assert s.listen_addr == ("::1", 0)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 10 s ", 10.0),
        (7, 7.0),
        (0.5, 0.5),
    ],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds
    s = parse_settings(minimal(drain_timeout=raw, timeouts={"connect": raw}))
    assert s.drain_timeout == seconds
    assert s.timeouts.connect == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [(8192, 8192), ("8192", 8192), ("8KiB", 8192), ("1MiB", 1 << 20), ("2kb", 2000), ("1 GiB", 1 << 30), ("0", 0)],
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size(raw) == size
    assert parse_settings(minimal(limits={"body": raw})).limits.body == size


@pytest.mark.parametrize("raw", ["fast", "10", "5 days", "-1s", True, -1, None])
def test_bad_durations(raw: object) -> None:
    errors = errors_of(minimal(timeouts={"connect": raw}))
    assert len(errors) == 1
    assert errors[0].startswith("timeouts.connect: "), errors


@pytest.mark.parametrize("raw", ["8 bytes", "1.5MiB", "-1", False, -5])
def test_bad_sizes(raw: object) -> None:
    errors = errors_of(minimal(limits={"headers": raw}))
    assert len(errors) == 1
    assert errors[0].startswith("limits.headers: "), errors


def test_access_log_true_is_the_section_enabled() -> None:
    assert parse_settings(minimal(access_log=True)).access_log.model_dump() == {
        "enabled": True,
        "path": "-",
        "format": "json",
        "sample": 1.0,
    }
    assert not parse_settings(minimal(access_log=False)).access_log.enabled


# -- one error, with its path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"timeouts": {"conect": "1s"}}, "timeouts.conect: unknown key (did you mean 'connect'?)"),
        ({"timeouts": {"connect": "soon"}}, "timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'soon'"),
        ({"active": "red"}, "active: 'red' is not a slot (slots: blue, green)"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies: not an IP address or CIDR: '10.0.0.0/33'"),
        ({"listen": "8080"}, "listen: expected host:port, got '8080'"),
        ({"listen": "127.0.0.1:65536"}, "listen: expected host:port, got '127.0.0.1:65536'"),
        ({"admin": {"listen": "localhost:http"}}, "admin.listen: expected host:port, got 'localhost:http'"),
        ({"slot_header": "X Slot"}, "slot_header: not a valid header name: 'X Slot'"),
        ({"log_level": "loud"}, "log_level: must be one of debug, info, warning, error"),
        ({"sticky": {"set_cookie": True}}, "sticky: sticky.set_cookie needs sticky.by cookie"),
        ({"sticky": {"by": "cookie", "name": "a b"}}, "sticky: sticky.name: not a valid cookie name: 'a b'"),
        ({"access_log": {"format": "clf"}}, "access_log.format: must be one of 'json' or 'combined'"),
        ({"access_log": {"sample": 0}}, "access_log.sample: must be greater than 0.0"),
        ({"access_log": "yes"}, "access_log: expected true or false (not a string like 'yes'), or a mapping"),
    ],
)
def test_single_error_has_its_path(overrides: dict[str, Any], expected: str) -> None:
    assert errors_of(minimal(**overrides)) == [expected]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:21", "not a URL of the form http://host:port or https://host:port: 'ftp://127.0.0.1:21'"),
        ("127.0.0.1:5002", "not a URL of the form http://host:port or https://host:port: '127.0.0.1:5002'"),
        ("http://127.0.0.1:5002/app", "an upstream URL has no path or query: 'http://127.0.0.1:5002/app'"),
        ("http://127.0.0.1:99999", "bad port in 'http://127.0.0.1:99999'"),
    ],
)
def test_bad_upstream_url_is_one_error_at_its_index(url: str, message: str) -> None:
    data = minimal()
    data["slots"]["green"]["upstreams"] = ["http://127.0.0.1:5003", url]
    assert errors_of(data) == [f"slots.green.upstreams[1]: {message}"]


def test_only_upstream_bad_is_one_error() -> None:
    # The slot's only upstream is invalid: one error for it, not a second "at least 1 item" one.
    data = minimal()
    data["slots"]["green"]["upstreams"] = ["green.internal:8080"]
    assert errors_of(data) == [
        "slots.green.upstreams[0]: not a URL of the form http://host:port or https://host:port: 'green.internal:8080'"
    ]


def test_upstream_must_be_a_url_string_not_a_mapping() -> None:
    data = minimal()
    data["slots"]["green"]["upstreams"] = [{"url": "ftp://x", "host": "x", "port": 99999}]
    errors = errors_of(data)
    assert len(errors) == 1, errors
    assert errors[0].startswith("slots.green.upstreams[0]: "), errors


def test_slot_without_upstreams() -> None:
    data = minimal()
    data["slots"]["green"]["upstreams"] = []
    errors = errors_of(data)
    assert len(errors) == 1
    assert errors[0].startswith("slots.green.upstreams: "), errors


@pytest.mark.parametrize("name", ["Blue", "1green", "green!", "g" * 33, ""])
def test_bad_slot_names(name: str) -> None:
    data = minimal(active="blue")
    data["slots"] = {"blue": data["slots"]["blue"], name: data["slots"]["green"]}
    assert errors_of(data) == [f"slots.{name}: {SLOT_RULE}"]


@pytest.mark.parametrize("names", [["blue"], ["blue", "green", "red"], []])
def test_wrong_number_of_slots(names: list[str]) -> None:
    slots = {name: {"upstreams": [f"http://127.0.0.1:{5001 + i}"]} for i, name in enumerate(names)}
    assert errors_of(minimal(slots=slots)) == [
        f"slots: exactly two slots are needed (e.g. blue and green), got {len(names)}"
    ]


def test_missing_required_keys() -> None:
    assert errors_of({}) == ["slots: required", "active: required"]
    assert errors_of(["not", "a", "mapping"]) == ["<root>: expected a mapping of settings"]


# -- several errors: all of them at once --------------------------------------------------------


def test_several_errors_are_all_reported_at_once() -> None:
    data = minimal(
        bogus=True,
        listen="nowhere",
        trusted_proxies=["10.0.0.0/8", "not-a-net"],
        timeouts={"connect": "later", "keepalive": "1m", "extra": 1},
        limits={"body": "lots"},
        admin={"listen": "0.0.0.0:99999"},
        workers=-1,
    )
    data["slots"]["green"]["upstreams"] = ["http://127.0.0.1:5002", "tcp://127.0.0.1:5003"]
    errors = errors_of(data)
    expected = [
        "bogus: unknown key",
        "listen: expected host:port, got 'nowhere'",
        "trusted_proxies: not an IP address or CIDR: 'not-a-net'",
        "timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'later'",
        "timeouts.extra: unknown key",
        "limits.body: expected a size like 8192, 8KiB or 1MiB, got 'lots'",
        "admin.listen: expected host:port, got '0.0.0.0:99999'",
        "workers: must be at least 0",
        "slots.green.upstreams[1]: not a URL of the form http://host:port or https://host:port: 'tcp://127.0.0.1:5003'",
    ]
    assert sorted(errors) == sorted(expected)


def test_several_errors_without_upstream_problems_are_all_reported() -> None:
    data = minimal(bogus=1, listen="x", trusted_proxies=["300.1.1.1"], timeouts={"connect": "soon"})
    data["slots"]["Green"] = data["slots"].pop("green")
    assert sorted(errors_of(data)) == sorted(
        [
            "bogus: unknown key",
            "listen: expected host:port, got 'x'",
            "trusted_proxies: not an IP address or CIDR: '300.1.1.1'",
            "timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'soon'",
            f"slots.Green: {SLOT_RULE}",
        ]
    )


def test_active_not_a_slot_is_reported_alongside_other_errors() -> None:
    errors = errors_of(minimal(active="red", bogus=1, timeouts={"connect": "soon"}))
    assert sorted(errors) == sorted(
        [
            "active: 'red' is not a slot (slots: blue, green)",
            "bogus: unknown key",
            "timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'soon'",
        ]
    )


# -- load_settings: the file itself -----------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_load_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "slots:\n  blue: [\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{path}:3:1: not valid YAML: "), info.value.errors


def test_load_empty_file_reports_required_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "# nothing here\n"))
    assert info.value.errors == ["slots: required", "active: required"]


def test_load_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "- blue\n- green\n"))
    assert info.value.errors == ["<root>: expected a mapping of settings"]


def test_load_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL_YAML.replace("active: blue", "active: bl\xfc").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{path}: "), info.value.errors


def test_load_reports_yaml_paths(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace('5002"', '5002", "http://127.0.0.1:5003/x"')
    text += "timeouts:\n  connect: 3 fortnights\nbogus: 1\n"
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert sorted(info.value.errors) == sorted(
        [
            "slots.green.upstreams[1]: an upstream URL has no path or query: 'http://127.0.0.1:5003/x'",
            "timeouts.connect: expected a duration like 250ms, 30s or 2m, got '3 fortnights'",
            "bogus: unknown key",
        ]
    )


# -- slotswitch check-config ------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
        check=False,
    )


def test_check_config_ok(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_YAML)
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: ok (slots blue, green; active blue)\n"
    # No token source: `run` would refuse (or need insecure_loopback), and check-config says so.
    assert done.stderr.startswith("warning: admin.tokens: no token source is configured"), done.stderr
    done = check_config(write(tmp_path, MINIMAL_YAML + "admin: {insecure_loopback: true}\n"))
    assert (done.returncode, done.stderr) == (0, "")


def test_check_config_field_and_cross_field_errors_at_once(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("active: blue", "active: purple")
    text += 'access_log: "yes"\nhealth: {checks: {red: []}}\nsticky: {by: cookie}\nworkers: many\n'
    done = check_config(write(tmp_path, text))
    assert done.returncode == 1
    lines = sorted(line.strip() for line in done.stderr.splitlines()[1:])
    assert lines == sorted(
        [
            "access_log: expected true or false (not a string like 'yes'), or a mapping",
            "workers: expected a whole number",
            "active: 'purple' is not a slot (slots: blue, green)",
            "health.checks: no slot named 'red'",
            "sticky: sticky.by cookie needs a name",
        ]
    ), done.stderr


def test_check_config_rejects_duplicate_keys_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_YAML + "drain_timeout: 5s\ndrain_timeout: 10s\n")
    done = check_config(path)
    assert done.returncode == 1
    line = len(MINIMAL_YAML.splitlines()) + 2
    assert f"  {path}:{line}:1: not valid YAML: duplicate key 'drain_timeout' (first at line {line - 1})" in done.stderr


def test_check_config_lists_every_error(tmp_path: Path) -> None:
    text = MINIMAL_YAML + "listen: nowhere\ntrusted_proxies: [bad]\nbogus: 1\ntimeouts: {connect: never}\n"
    path = write(tmp_path, text)
    done = check_config(path)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == f"{path}: 4 error(s)"
    assert sorted(lines[1:]) == sorted(
        [
            "  listen: expected host:port, got 'nowhere'",
            "  trusted_proxies: not an IP address or CIDR: 'bad'",
            "  bogus: unknown key",
            "  timeouts.connect: expected a duration like 250ms, 30s or 2m, got 'never'",
        ]
    )


def test_check_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    done = check_config(path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{path}: 1 error(s)", f"  {path}: cannot read: No such file or directory"]


def test_example_config_passes_check_config() -> None:
    example = REPO / "config" / "example.yaml"
    if not example.exists():
        pytest.skip("config/example.yaml is not written yet")
    done = check_config(example)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{example}: ok ")
