"""One task can never take the agent down (issue 14, decision 49): a real relay and a
real agent process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import Api, Relay, run_cli, wait_for, wait_online, wait_task


def create(api: Api, device_id: str, action: str, **params: object) -> str:
    return str(api.ok("POST", "/api/v1/tasks", {"device_id": device_id, "action": action, "params": params})["id"])


@pytest.mark.parametrize("params", [
    {"pid": 100000000000000000001},  # the reproduction: the agent exited on it
    {"pid": 2**53},
    {"pid": -(2**70)},
])
def test_an_integer_beyond_the_safe_range_is_refused_at_the_relay_and_the_agent_keeps_serving(
    relay: Relay, agent_factory, params: dict[str, int],
) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("pid", admin)
    agent.start()
    wait_online(admin, device_id)
    answer = admin.post("/api/v1/tasks", {"device_id": device_id, "action": "app.close", "params": params})
    assert answer.status == 400, answer.body
    assert "params.pid" in answer.body["detail"]
    assert admin.ok("GET", f"/api/v1/tasks?device_id={device_id}")["items"] == []  # nothing created
    assert agent.running
    done = wait_task(admin, create(admin, device_id, "file.write", path=str(sandbox / "after.txt"), content="ok"))
    assert done["status"] == "succeeded", done
    assert agent.running


def _limit_file_size(pid: int, limit: str) -> None:
    """RLIMIT_FSIZE on the running agent (prlimit(1)): a write past ``limit`` bytes fails
    with EFBIG, as on a full disk -- the operating system's own refusal, not a fake."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--fsize={limit}:unlimited"], check=True)


@pytest.mark.skipif(not Path("/usr/bin/prlimit").exists() or os.name != "posix", reason="needs prlimit(1)")
def test_a_full_disk_refuses_tasks_keeps_the_connection_reports_it_and_resumes(relay: Relay, agent_factory) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("full", admin)
    agent.start()
    wait_online(admin, device_id)
    assert agent.proc is not None
    data_dir = agent.data_dir
    files = [data_dir / "agent.db", data_dir / "agent.db-wal"]
    # No file of the agent's may grow from here: the next journal write has no room.
    _limit_file_size(agent.proc.pid, str(max(f.stat().st_size for f in files if f.exists())))

    refused = wait_task(admin, create(admin, device_id, "file.write", path=str(sandbox / "a.txt"), content="x" * 9000))
    assert refused["status"] == "failed", refused
    assert refused["result"]["error"].startswith("refused, not run: disk full"), refused
    assert not (sandbox / "a.txt").exists()
    assert agent.running
    device = wait_for(lambda: ((d := admin.ok("GET", f"/api/v1/devices/{device_id}"))["telemetry"] or {}).get("disk_full") and d,
                      what="the disk-full state in a heartbeat")
    assert device["online"] is True  # the connection stayed up
    status = json.loads(run_cli("agent", "status", "--data-dir", str(data_dir), "--output", "json").stdout)
    assert status["disk_full"].startswith("disk full")

    _limit_file_size(agent.proc.pid, "unlimited")  # space returns
    done = wait_task(admin, create(admin, device_id, "file.write", path=str(sandbox / "b.txt"), content="y" * 9000))
    assert done["status"] == "succeeded", done
    assert (sandbox / "b.txt").read_text() == "y" * 9000
    wait_for(lambda: "disk_full" not in admin.ok("GET", f"/api/v1/devices/{device_id}")["telemetry"],
             what="the disk-full state to clear")
    assert json.loads(run_cli("agent", "status", "--data-dir", str(data_dir), "--output", "json").stdout)["disk_full"] is None
    assert agent.running
