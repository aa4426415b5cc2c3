"""The agent reloads its policy when the file changes or on `coact agent reload`,
refuses a bad one and keeps the previous, and audits both (issue 15.6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import Agent, Api, Relay, run_cli, wait_for, wait_online, wait_task

from coact.policy.document import render_sandbox_policy


@pytest.fixture
def setup(relay: Relay, tmp_path: Path) -> tuple[Api, Agent, str, Path]:
    admin, _ = relay.new_admin()
    sandbox = tmp_path / "first"
    sandbox.mkdir()
    agent, device_id = Agent.enroll(relay, admin, tmp_path / "agent", sandbox)
    agent.start()
    wait_online(admin, device_id)
    yield admin, agent, device_id, sandbox
    agent.stop()


def _stat(admin: Api, device_id: str, path: Path) -> dict[str, Any]:
    task = admin.ok("POST", "/api/v1/tasks", {"device_id": device_id, "action": "file.stat", "params": {"path": str(path)}})
    return wait_task(admin, task["id"])


def _policy_records(admin: Api, device_id: str) -> list[dict[str, Any]]:
    items = admin.ok("GET", f"/api/v1/audit?device_id={device_id}&limit=5000")["items"]
    return [r for r in items if r["kind"].startswith("policy.reload")]


def test_a_changed_policy_file_takes_effect_and_is_audited(setup: tuple[Api, Agent, str, Path], tmp_path: Path) -> None:
    admin, agent, device_id, _first = setup
    second = tmp_path / "second"
    second.mkdir()
    assert _stat(admin, device_id, second)["status"] == "failed"  # outside the sandbox: denied
    run_cli("policy", "init", "--force", "--sandbox", str(second), "--data-dir", str(agent.data_dir))
    wait_for(lambda: _policy_records(admin, device_id), timeout=30, what="the reload's audit record")
    assert _stat(admin, device_id, second)["status"] == "succeeded"
    reloaded = _policy_records(admin, device_id)[-1]
    assert reloaded["kind"] == "policy.reloaded"
    assert reloaded["data"]["reason"] == "file changed"
    assert reloaded["data"]["previous_sha256"] != reloaded["data"]["sha256"]


def test_a_broken_policy_is_refused_and_the_previous_one_stays(setup: tuple[Api, Agent, str, Path]) -> None:
    admin, agent, device_id, first = setup
    (agent.data_dir / "policy.toml").write_text("this is [not toml")
    said = run_cli("agent", "reload", "--data-dir", str(agent.data_dir), check=False)
    assert said.returncode == 1
    assert "refused and the previous one stays in force" in said.stderr
    assert _stat(admin, device_id, first)["status"] == "succeeded"  # still the old sandbox
    wait_for(lambda: _policy_records(admin, device_id), timeout=30, what="the refusal's audit record")
    refused = _policy_records(admin, device_id)[0]
    assert refused["kind"] == "policy.reload_failed"
    assert "policy.toml" in refused["data"]["error"]
    assert refused["data"]["kept_sha256"]
    status = json.loads(run_cli("agent", "status", "--data-dir", str(agent.data_dir), "--output", "json").stdout)
    assert status["policy_error"]

    # Fixed again: a reload on request puts it in force and clears the error.
    (agent.data_dir / "policy.toml").write_text(render_sandbox_policy(str(first.resolve())))
    fixed = json.loads(run_cli("agent", "reload", "--data-dir", str(agent.data_dir), "--output", "json").stdout)
    assert fixed["policy_error"] is None


def test_reload_without_a_running_agent_says_so(tmp_path: Path) -> None:
    missing = run_cli("agent", "reload", "--data-dir", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 1
    assert "no running agent found" in missing.stderr
