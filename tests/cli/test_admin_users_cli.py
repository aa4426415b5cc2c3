"""``coact admin users ...`` against a real relay, run as a subprocess like users run it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import PASSWORD, TEST_ENV, Api, Relay, coact_command


class Cli:
    def __init__(self, url: str, config: Path) -> None:
        self.url = url
        self.env = {"XDG_CONFIG_HOME": str(config)}

    def __call__(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COACT_")}
        return subprocess.run(
            coact_command(*args, "--relay", self.url), capture_output=True, text=True, timeout=90,
            input=input, env={**env, **TEST_ENV, **self.env},
        )

    def ok(self, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        result = self(*args, input=input)
        assert result.returncode == 0, f"coact {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def json(self, *args: str, input: str = "") -> Any:
        return json.loads(self.ok(*args, "--output", "json", input=input).stdout)


@pytest.fixture
def org(relay: Relay) -> tuple[Api, dict[str, Any]]:
    return relay.new_admin()


@pytest.fixture
def cli(relay: Relay, org: tuple[Api, dict[str, Any]], tmp_path: Path) -> Cli:
    runner = Cli(relay.url, tmp_path / "config")
    runner.ok("login", "--email", org[1]["email"], "--password-stdin", input=PASSWORD + "\n")
    return runner


def test_add_list_set_role_disable_enable(relay: Relay, cli: Cli, org: tuple[Api, dict[str, Any]]) -> None:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    added = cli.json("admin", "users", "add", email, "--role", "operator", "--password-stdin", input=PASSWORD + "\n")
    assert (added["email"], added["role"], added["disabled"]) == (email, "operator", False)

    table = cli.ok("admin", "users", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "EMAIL", "ROLE", "STATUS", "CREATED_AT"]
    assert any(added["id"] in line and "operator" in line and "active" in line for line in table[1:])
    listed = cli.json("admin", "users", "ls")
    assert [u["email"] for u in listed] == [org[1]["email"], email]
    assert len(cli.json("admin", "users", "ls", "--limit", "1")) == 1

    # By email (any case) or by id.
    changed = cli.ok("admin", "users", "set-role", email.upper(), "viewer")
    assert f"{email} ({added['id']}) is now viewer." in changed.stdout
    session = relay.api().ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
    disabled = cli.json("admin", "users", "disable", added["id"], "--yes")
    assert disabled["disabled"] is True
    assert relay.api(session["access_token"]).get("/api/v1/me").status == 401
    assert relay.api().post("/api/v1/auth/refresh", {"refresh_token": session["refresh_token"]}).status == 401
    enabled = cli.ok("admin", "users", "enable", email)
    assert f"Enabled {email}" in enabled.stdout
    assert cli.json("admin", "users", "ls")[1]["role"] == "viewer"
    relay.api().ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})


def test_refusals_are_one_clear_line(relay: Relay, cli: Cli, org: tuple[Api, dict[str, Any]]) -> None:
    last_admin = cli("admin", "users", "set-role", org[1]["email"], "viewer")
    assert last_admin.returncode == 1
    assert "409" in last_admin.stderr
    assert "last enabled admin" in last_admin.stderr
    assert "Traceback" not in last_admin.stderr

    unknown = cli("admin", "users", "disable", "nobody@example.com", "--yes")
    assert unknown.returncode == 1
    assert "no user with id or email 'nobody@example.com'" in unknown.stderr

    weak = cli("admin", "users", "add", "weak@example.com", "--role", "viewer", "--password-stdin", input="short\n")
    assert weak.returncode == 1
    assert "body.password" in weak.stderr

    bad_role = cli("admin", "users", "add", "x@example.com", "--role", "root", "--password-stdin", input=PASSWORD + "\n")
    assert bad_role.returncode == 2  # a usage error, caught before any request

    # A user of another org is not found, not changed.
    other, other_user = relay.new_admin()
    foreign = cli("admin", "users", "disable", other_user["id"], "--yes")
    assert foreign.returncode == 1
    assert other.ok("GET", "/api/v1/me")["user"]["disabled"] is False


def test_non_admins_are_told_they_may_not(relay: Relay, cli: Cli, org: tuple[Api, dict[str, Any]], tmp_path: Path) -> None:
    email = f"viewer-{uuid.uuid4().hex[:8]}@example.com"
    cli.ok("admin", "users", "add", email, "--role", "viewer", "--password-stdin", input=PASSWORD + "\n")
    viewer = Cli(relay.url, tmp_path / "viewer-config")
    viewer.ok("login", "--email", email, "--password-stdin", input=PASSWORD + "\n")
    refused = viewer("admin", "users", "ls")
    assert refused.returncode == 1
    assert "403" in refused.stderr
    assert "role viewer may not do this" in refused.stderr
