"""`coact policy init` and `coact agent run` refuse a policy that could reach the agent's
own files, or that someone else could change (issue 14, finding 2). Real processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coact.agent.config import DataDir, Identity
from coact.shared import keys
from tests.harness import TEST_ENV, coact_command, run_cli


def init(sandbox: Path | str, data: Path) -> tuple[int, str]:
    result = run_cli("policy", "init", "--sandbox", str(sandbox), "--data-dir", str(data), check=False)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("where", ["parent", "grandparent", "itself", "inside", "slash", "alias", "trailing"])
def test_init_refuses_a_sandbox_that_contains_or_lies_in_the_data_dir(tmp_path: Path, where: str) -> None:
    data = tmp_path / "home" / "agent"
    data.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "home")
    sandbox = {"parent": tmp_path / "home", "grandparent": tmp_path, "itself": data, "inside": data / "sandbox",
               "slash": "/", "alias": tmp_path / "alias", "trailing": f"{tmp_path}/home/"}[where]
    code, out = init(sandbox, data)
    assert code != 0
    assert "refusing --sandbox" in out or "whole file system" in out, out
    assert not (data / "policy.toml").exists()
    assert not (data / "sandbox").exists()


def test_init_refuses_a_sandbox_writable_by_others(tmp_path: Path) -> None:
    sandbox = tmp_path / "shared"
    sandbox.mkdir()
    os.chmod(sandbox, 0o777)
    code, out = init(sandbox, tmp_path / "agent")
    assert code != 0
    assert "writable by group or others" in out, out
    assert "chmod" in out, out
    assert not (tmp_path / "agent" / "policy.toml").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_init_refuses_a_sandbox_owned_by_another_user(tmp_path: Path) -> None:
    sandbox = tmp_path / "theirs"
    sandbox.mkdir()
    os.chown(sandbox, 65534, 65534)
    code, out = init(sandbox, tmp_path / "agent")
    assert code != 0
    assert "owned by uid 65534" in out, out


def test_init_accepts_a_sandbox_beside_the_data_dir(tmp_path: Path) -> None:
    code, out = init(tmp_path / "sandbox", tmp_path / "agent")
    assert code == 0, out
    assert (tmp_path / "sandbox").stat().st_mode & 0o022 == 0


def enrolled(data: Path) -> DataDir:
    """A data directory as `coact agent enroll` leaves it (the relay is never reached)."""
    directory = DataDir(data)
    directory.ensure()
    directory.write_private_key(keys.generate_private_key())
    directory.write_identity(Identity("dev-1", "org-1", "http://127.0.0.1:9", "", "", "test", "2026-01-01T00:00:00Z"))
    return directory


def start(data: Path) -> tuple[int, str]:
    result = run_cli("agent", "run", "--data-dir", str(data), check=False, timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(("root", "says"), [
    ("{home}", "contains the agent's own"),
    ("{data}/sub", "lies inside the agent's own"),
    ("/", "whole file system"),
    ("{alias}", "is the whole file system"),
])
def test_agent_start_refuses_a_policy_that_reaches_its_own_files(tmp_path: Path, root: str, says: str) -> None:
    data = tmp_path / "home" / "agent"
    directory = enrolled(data)
    (tmp_path / "alias").symlink_to("/")
    root = root.format(home=tmp_path / "home", data=data, alias=tmp_path / "alias")
    directory.policy_path.write_text(f'version = 1\n[files]\nread_roots = ["{root}"]\nwrite_roots = []\n')
    os.chmod(directory.policy_path, 0o600)
    code, out = start(data)
    assert code == 1, out
    assert says in out, out
    # A '/' root is a parse error (policy/paths.py); the others say how to recover.
    assert root == "/" or "start the agent again" in out


@pytest.mark.parametrize("what", ["policy", "data"])
def test_agent_start_refuses_a_policy_others_could_change(tmp_path: Path, what: str) -> None:
    data = tmp_path / "agent"
    directory = enrolled(data)
    assert init(tmp_path / "sandbox", data)[0] == 0
    os.chmod(directory.policy_path if what == "policy" else data, 0o666 if what == "policy" else 0o777)
    code, out = start(data)
    assert code == 1, out
    assert "writable by group or others" in out, out


def test_init_judges_a_relative_data_dir_and_sandbox_by_their_real_paths(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "dd").symlink_to(tmp_path / "home")
    for sandbox, data in [(".", "agent"), ("home", "dd/agent"), ("dd", "home/agent")]:
        result = subprocess.run(
            coact_command("policy", "init", "--sandbox", sandbox, "--data-dir", data),
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, **TEST_ENV},
        )
        assert result.returncode != 0, (sandbox, data, result.stdout)
        assert "contains the agent's own" in result.stderr, result.stderr
    assert not list(tmp_path.rglob("policy.toml"))
