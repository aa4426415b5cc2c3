"""The installers stay consistent with the CLI they launch."""

from __future__ import annotations

import configparser
import plistlib
import subprocess
from pathlib import Path
from typing import Any

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


def _rendered_plist(home: str) -> dict[str, Any]:
    """The LaunchAgent as install-agent-macos.sh would install it for ``home``."""
    rendered = subprocess.run(["bash", str(INSTALLERS / "install-agent-macos.sh"), "--print-plist"],
                              capture_output=True, check=True, env={"HOME": home, "PATH": "/usr/bin:/bin"})
    return plistlib.loads(rendered.stdout)  # type: ignore[no-any-return]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def test_launchd_plist_is_valid_and_runs_the_agent_with_absolute_paths() -> None:
    plist = _rendered_plist("/Users/ada lovelace")
    assert plist["ProgramArguments"][1:3] == ["agent", "run"]
    _parses(plist["ProgramArguments"])
    # launchd expands neither ~ nor $HOME: every path it is given must be absolute already.
    for text in _strings(plist):
        for unexpanded in ("~", "$", "@HOME@"):
            assert unexpanded not in text, text
    data_dir = plist["ProgramArguments"][plist["ProgramArguments"].index("--data-dir") + 1]
    assert data_dir == "/Users/ada lovelace/Library/Application Support/Coact/agent"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert plist[key].startswith("/Users/ada lovelace/Library/Logs/"), plist[key]
    # Restarted after a crash only: a revoked agent's exit must leave it stopped.
    assert plist["KeepAlive"] == {"Crashed": True}


def test_launchd_plist_says_the_exit_status_the_cli_uses_for_a_revocation() -> None:
    from coact.agent.cli import EXIT_REVOKED

    text = (INSTALLERS / "launchd" / "dev.coact.agent.plist").read_text()
    assert f"revoked device exits {EXIT_REVOKED}" in text
    assert f"status {EXIT_REVOKED}" in (INSTALLERS / "README.md").read_text()


def test_launchd_installer_refuses_a_home_it_cannot_write_into_the_plist() -> None:
    refused = subprocess.run(["bash", str(INSTALLERS / "install-agent-macos.sh"), "--print-plist"],
                             capture_output=True, text=True, env={"HOME": "relative/home", "PATH": "/usr/bin:/bin"})
    assert refused.returncode == 1
    assert "HOME must be an absolute path" in refused.stderr


def test_install_scripts_are_valid_bash_and_refuse_missing_arguments() -> None:
    for script in ("install-agent.sh", "install-agent-macos.sh", "uninstall-agent.sh"):
        subprocess.run(["bash", "-n", str(INSTALLERS / script)], check=True)
    missing = subprocess.run(["bash", str(INSTALLERS / "install-agent.sh"), "--relay", "http://x"],
                             capture_output=True, text=True)
    assert missing.returncode == 2
    assert "need --relay, --code and --sandbox" in missing.stderr
