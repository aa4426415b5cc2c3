"""The ``coact`` console script: one entry point for relay, agent, policy and admin commands.

Subcommand groups are imported lazily so that ``coact agent run`` never loads the
relay (and the reverse): each side starts only what it needs.
"""

from __future__ import annotations

import importlib

import click

LAZY_GROUPS = {
    "relay": ("coact.relay.cli", "relay_group"),
    "agent": ("coact.agent.cli", "agent_group"),
    "policy": ("coact.agent.cli", "policy_group"),
    "login": ("coact.cli.admin", "login"),
    "logout": ("coact.cli.admin", "logout"),
    "devices": ("coact.cli.admin", "devices_group"),
    "tasks": ("coact.cli.admin", "tasks_group"),
    "audit": ("coact.cli.admin", "audit_group"),
    "admin": ("coact.cli.admin_users", "admin_group"),
    "quickstart": ("coact.cli.quickstart", "quickstart"),
    "sim": ("coact.agent.sim", "sim_command"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_GROUPS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="coact")
def cli() -> None:
    """Coact: secure, auditable actions on real devices."""


def main() -> None:
    cli(prog_name="coact")
