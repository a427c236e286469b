"""The `slotswitch` command: run the proxy, check a config, or run the demo."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys

import click

from proxy.cli import diff as _diff  # noqa: F401  (registers `slotswitch diff`)
from proxy.cli.client import register
from proxy.settings.model import ConfigError, config_warnings, load_settings, parse_settings


class Group(click.Group):
    """The command group; `lint-migration` is imported only when used (sqlglot is slow to import)."""

    LAZY = {"lint-migration": ("proxy.release.migrations.lint", "lint_migration_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, attr = self.LAZY[name]
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, name)


@click.group(cls=Group)
@click.version_option(package_name="slotswitch")
def main() -> None:
    """slotswitch: a blue-green switching reverse proxy."""


@main.command()
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML config file.")
@click.option(
    "--reset-state",
    is_flag=True,
    help="Start from the config's routing state (active slot, upstreams), overwriting the saved state file.",
)
def run(config_path: str, reset_state: bool) -> None:
    """Run the proxy with CONFIG (SIGHUP reloads it, SIGTERM drains and exits).

    The routing state (active slot, ramp, deployed upstreams, generation) is saved on every change
    and restored on start; the config's `active:` applies only to the first start or with
    --reset-state."""
    from proxy.process.runtime import run as run_proxy

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"invalid config {config_path}:", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    sys.exit(run_proxy(settings, config_path, reset_state=reset_state))


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file offline; exit 1 and list every error if it is invalid."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"{config_path}: {len(exc.errors)} error(s)", err=True)
        for line in exc.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"{config_path}: ok (slots {', '.join(settings.slots)}; active {settings.active})")
    for warning in config_warnings(settings):
        click.echo(f"warning: {warning}", err=True)


DEMO_HELP = """\
slotswitch demo is running:
  proxy      http://127.0.0.1:{proxy}/        (active slot: blue, answers "v1")
  admin API  http://127.0.0.1:{admin}/v1/status
  console    http://127.0.0.1:{admin}/ui      (live view and release buttons; no login on loopback)
  blue app   http://127.0.0.1:{blue}/   green app http://127.0.0.1:{green}/

Try:
  curl -i http://127.0.0.1:{proxy}/
  curl -s http://127.0.0.1:{admin}/v1/status
  curl -s -X POST http://127.0.0.1:{admin}/v1/switch -d '{{"slot": "green", "reason": "demo"}}'
  curl -i http://127.0.0.1:{proxy}/            # now "v2" from green
  curl -s -X POST http://127.0.0.1:{admin}/v1/rollback -d '{{"reason": "demo rollback"}}'
  curl -i http://127.0.0.1:{proxy}/            # "v1" again

Ctrl-C stops everything.
"""


@main.command()
@click.option("--port", default=8080, show_default=True, help="Proxy port on 127.0.0.1.")
@click.option("--admin-port", default=9901, show_default=True, help="Admin API port on 127.0.0.1.")
@click.option("--blue-port", default=5001, show_default=True)
@click.option("--green-port", default=5002, show_default=True)
@click.option(
    "--scenario",
    type=click.Choice(["plain", "bad-release"]),
    default="plain",
    show_default=True,
    help="bad-release: send traffic, ramp to a green that fails 20 % of requests, and watch the judge roll back.",
)
def demo(port: int, admin_port: int, blue_port: int, green_port: int, scenario: str) -> None:
    """Start two sample apps (blue "v1", green "v2") and the proxy in front of them, on loopback."""
    import uvloop

    from proxy.process.host import configure_logging

    configure_logging("info")
    settings = parse_settings(
        {
            "listen": f"127.0.0.1:{port}",
            "slots": {
                "blue": {"upstreams": [f"http://127.0.0.1:{blue_port}"]},
                "green": {"upstreams": [f"http://127.0.0.1:{green_port}"]},
            },
            "active": "blue",
            "drain_timeout": "10s",
            "admin": {"listen": f"127.0.0.1:{admin_port}", "insecure_loopback": True},
            **(_scenario_settings() if scenario == "bad-release" else {}),
        }
    )
    sys.exit(uvloop.run(_demo(settings, blue_port, green_port, scenario)))


def _scenario_settings() -> dict[str, object]:
    from proxy.process.demo_scenario import SETTINGS

    return SETTINGS


async def _demo(settings: object, blue_port: int, green_port: int, scenario: str = "plain") -> int:
    from proxy.process import demo_scenario
    from proxy.process.demo_apps import run_demo_apps
    from proxy.process.runtime import Slotswitch
    from proxy.settings.model import Settings

    assert isinstance(settings, Settings)
    runners = await run_demo_apps(blue_port, green_port)
    app = Slotswitch(settings, token="")
    await app.start()
    click.echo(DEMO_HELP.format(proxy=app.proxy_port, admin=app.admin_port, blue=blue_port, green=green_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if scenario == "bad-release":
        click.echo(demo_scenario.help_text(app.admin_port, green_port))
        async with demo_scenario.bad_release(app, green_port):
            await stop.wait()
    else:
        await stop.wait()
    await app.stop(timeout=2.0)
    for runner in runners:
        await runner.cleanup()
    return 0


register(main)

if __name__ == "__main__":
    main()
