"""The installers stay consistent with the CLI they launch."""

from __future__ import annotations

import configparser
import plistlib
import subprocess
from pathlib import Path

from click.testing import CliRunner

from coact.cli.main import cli

INSTALLERS = Path(__file__).resolve().parents[1] / "installers"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(INSTALLERS / "systemd" / name)
    return parser


def _parses(argv: list[str]) -> None:
    """The command line a service runs must be one `coact` accepts (checked via --help)."""
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_systemd_units_run_real_commands_hardened() -> None:
    for name, expected in (("coact-agent.service", ["agent", "run"]), ("coact-relay.service", ["relay", "serve"])):
        unit = _unit(name)
        argv = unit["Service"]["ExecStart"].split()
        assert argv[1:3] == expected
        _parses(argv)
        assert unit["Service"]["NoNewPrivileges"] == "yes"
        assert unit["Service"]["UMask"] == "0077"
    # A revoked agent exits with EXIT_REVOKED on purpose: the unit must not restart it.
    from coact.agent.cli import EXIT_REVOKED

    agent = _unit("coact-agent.service")["Service"]
    assert agent["Restart"] == "on-failure"
    # The relay holds a socket per client: its descriptor limit must exceed max_connections.
    from coact.relay.settings import Settings
    assert int(_unit("coact-relay.service")["Service"]["LimitNOFILE"]) > Settings().max_connections
    assert agent["RestartPreventExitStatus"] == str(EXIT_REVOKED)


def test_launchd_plist_is_valid_and_runs_the_agent() -> None:
    with (INSTALLERS / "launchd" / "dev.coact.agent.plist").open("rb") as handle:
        plist = plistlib.load(handle)
    assert plist["ProgramArguments"][1:3] == ["agent", "run"]
    _parses(plist["ProgramArguments"])
    assert plist["KeepAlive"] == {"Crashed": True}


def test_install_scripts_are_valid_bash_and_refuse_missing_arguments() -> None:
    for script in ("install-agent.sh", "uninstall-agent.sh"):
        subprocess.run(["bash", "-n", str(INSTALLERS / script)], check=True)
    missing = subprocess.run(["bash", str(INSTALLERS / "install-agent.sh"), "--relay", "http://x"],
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert "need --relay, --code and --sandbox" in missing.stderr
