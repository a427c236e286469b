"""The docs: the generated reference pages are current (tools/gen_config_reference.py), config/example.yaml
sets every key to its default, and the README and the hand-written docs name commands, metrics, files
and benchmark figures that exist.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from proxy.settings.model import parse_settings
from tests.shipping_util import (
    COMPOSE_FILE,
    CONFIG,
    METRIC_RE,
    NOT_METRICS,
    ROOT,
    exported_series,
    gen,
    run,
    yaml_file,
)

README = ROOT / "README.md"
EXAMPLE = CONFIG / "example.yaml"
BENCH_RESULTS = ROOT / "bench" / "results" / "compare.json"
REGENERATE = ".venv/bin/python tools/gen_config_reference.py"


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
    from proxy.cli.main import main

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
