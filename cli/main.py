"""The ``coact`` console script: one entry point for relay, agent, policy and admin commands.

Subcommand groups are imported lazily so that ``coact agent run`` never loads the
relay (and the reverse): each side starts only what it needs.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, the one line `coact --help` shows). The line is written
# here, not read from the command, because reading it means importing every group: the
# relay's too, which made a bare `coact --help` take seconds (tests/cli/test_startup.py
# holds each line to its command's own).
LAZY_GROUPS: dict[str, tuple[str, str, str]] = {
    "actions": ("coact.cli.actions", "actions_group", "The actions a task can name: their params, risk and support."),
    "relay": ("coact.relay.cli", "relay_group", "Run the relay: API, agent hub, scheduler and audit pipeline."),
    "agent": ("coact.agent.cli", "agent_group", "The resident device agent: enroll this device, run it, check on it."),
    "policy": ("coact.agent.cli", "policy_group", "The agent's local policy (default deny)."),
    "login": ("coact.cli.admin", "login", "Log in to a relay and save the session in a profile."),
    "logout": ("coact.cli.admin", "logout", "End the profile's session at the relay and delete its saved tokens."),
    "devices": ("coact.cli.admin", "devices_group", "List, inspect and revoke devices; create enrollment codes."),
    "tasks": ("coact.cli.admin", "tasks_group", "Run tasks on devices; list, show and cancel them."),
    "audit": ("coact.cli.admin", "audit_group", "Read and verify the tamper-evident audit trail."),
    "admin": ("coact.cli.admin_users", "admin_group", "Administer the org (admins only)."),
    "quickstart": ("coact.cli.quickstart", "quickstart",
                   "Run a relay and a local agent on the embedded default and show a task end to end."),
    "sim": ("coact.agent.sim", "sim_command", "Simulate a fleet of agents against a relay (load tests; see docs/sim.md)."),
}


class LazyGroup(click.Group):
    """Loads a subcommand's module only when that subcommand runs (or its help is asked)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_GROUPS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, LAZY_GROUPS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="coact")
def cli() -> None:
    """Coact: secure, auditable actions on real devices."""


def main() -> None:
    cli(prog_name="coact")
