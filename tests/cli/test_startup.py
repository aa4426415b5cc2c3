"""`coact --help` and the agent's commands start without loading what they do not use.

Listing the commands once imported every group to read its help line, the relay and the
agent runtime with it (aiohttp, sqlite-utils, pandas): 2–2.4 s for a bare `coact --help`
on a busy machine (issue 21).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest

from coact.cli.main import LAZY_GROUPS, cli

HEAVY = ("aiohttp", "sqlite_utils", "pandas", "numpy", "sqlalchemy", "chdb", "pydantic")


def _loaded_after(argv: list[str]) -> list[str]:
    """The relay modules and heavy libraries loaded by running ``coact argv`` to its end."""
    code = (
        "import sys\n"
        "from coact.cli.main import main\n"
        f"sys.argv = ['coact', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = {HEAVY!r}\n"
        "import json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('coact.relay') or m in heavy)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_the_top_level_help_loads_no_command_module() -> None:
    assert _loaded_after(["--help"]) == []


@pytest.mark.parametrize("argv", [["agent", "--help"], ["agent", "status", "--help"], ["policy", "--help"],
                                  ["agent", "run", "--help"], ["agent", "enroll", "--help"]])
def test_agent_commands_load_no_relay_code(argv: list[str]) -> None:
    assert [m for m in _loaded_after(argv) if m.startswith("coact.relay")] == []


def test_each_listed_help_line_is_the_commands_own() -> None:
    ctx = click.Context(cli, info_name="coact")
    for name, (_, _, line) in LAZY_GROUPS.items():
        command = cli.get_command(ctx, name)
        assert command is not None
        assert line == command.get_short_help_str(limit=1000), name
