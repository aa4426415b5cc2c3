"""docs/cli.md documents every admin command and every one of its options."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from coact.cli.admin import audit_group, devices_group, login, logout, tasks_group

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()


def commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [("coact login", login), ("coact logout", logout)]
    for group in (devices_group, tasks_group, audit_group):
        assert isinstance(group, click.Group)
        found += [(f"coact {group.name} {name}", cmd) for name, cmd in sorted(group.commands.items())]
    return found


@pytest.mark.parametrize(("name", "command"), commands(), ids=[n for n, _ in commands()])
def test_command_and_options_are_documented(name: str, command: click.Command) -> None:
    heading = re.search(rf"^### {re.escape(name)}$", DOCS, flags=re.MULTILINE)
    assert heading, f"docs/cli.md has no '### {name}' section"
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(f"`{opt}" in DOCS for opt in param.opts), f"{name}: option {param.opts[0]} is undocumented"
