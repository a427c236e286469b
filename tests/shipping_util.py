"""Shared by the shipping tests (test_dockerfile, test_compose, test_compose_stack, test_kubernetes,
test_docs): the repository's paths, the reference-page generator (tools/gen_config_reference.py, loaded
once), running an optional tool, and the parsers of the Dockerfile and of the compose file that more
than one of those test files reads.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings.model import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
CONFIG = ROOT / "config"
RULES = CONFIG / "prometheus" / "rules" / "slotswitch.rules.yml"


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
TLS_ONLY_METRICS = {"slotswitch_tls_certificate_expiry_seconds"}  # exported only with tls on the listener


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the Dockerfile, as instructions ------------------------------------------------------------


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


# -- the compose file: services, mounts, ports ---------------------------------------------------


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
