"""Starting and stopping a relay as an admin meets it (issue 15): a stop with agents
connected is quick and loses no audit record; a port in use, or a data directory a
relay still holds, is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import (
    TEST_ENV,
    Agent,
    Api,
    Relay,
    coact_command,
    free_port,
    run_cli,
    wait_for,
    wait_online,
)

AGENTS = 2
TASKS_PER_AGENT = 40


def _device_records(admin: Api, device_id: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = admin.ok("GET", f"/api/v1/audit?device_id={device_id}&limit=5000" + (f"&cursor={cursor}" if cursor else ""))
        records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return sorted(records, key=lambda r: int(r["seq"]))


def _pending(agent: Agent) -> int:
    status = run_cli("agent", "status", "--data-dir", str(agent.data_dir), "--output", "json")
    return int(json.loads(status.stdout)["pending_audit"])


def test_stopping_with_agents_connected_and_audit_in_flight_is_quick_and_loses_nothing(tmp_path: Path) -> None:
    relay = Relay(tmp_path / "relay")
    relay.start()
    agents: list[tuple[Agent, str]] = []
    try:
        admin, _ = relay.new_admin()
        for n in range(AGENTS):
            sandbox = tmp_path / f"sandbox{n}"
            sandbox.mkdir()
            agent, device_id = Agent.enroll(relay, admin, tmp_path / f"agent{n}", sandbox)
            agent.start()
            agents.append((agent, device_id))
        for _, device_id in agents:
            wait_online(admin, device_id)
        # Tasks still running and their audit records on the way while the relay stops.
        for _ in range(TASKS_PER_AGENT):
            for n, (_, device_id) in enumerate(agents):
                admin.ok("POST", "/api/v1/tasks", {"device_id": device_id, "action": "file.list",
                                                   "params": {"path": str(tmp_path / f"sandbox{n}")}})
        started = time.monotonic()
        code = relay.stop(signal.SIGTERM, timeout=90)
        took = time.monotonic() - started
        print(f"relay stopped in {took:.2f} s with {AGENTS} agents connected (exit {code})")
        assert code == 0
        assert took < 20, f"a stop with agents connected took {took:.1f} s"  # it was ~73 s

        relay.start()
        for agent, device_id in agents:
            wait_online(admin, device_id, timeout=60)
            wait_for(lambda a=agent: _pending(a) == 0, timeout=60, what="the agent's outbox to drain")
            records = _device_records(admin, device_id)
            seqs = [int(r["seq"]) for r in records]
            assert seqs == list(range(1, len(seqs) + 1)), "a record is missing or stored twice"
            assert len(seqs) > TASKS_PER_AGENT * 3
            # Its own audit trail says the relay closed the socket with 1001, going away.
            reconnects = [r["data"].get("error") or "" for r in records if r["kind"] == "agent.reconnect"]
            assert any("1001" in error for error in reconnects), reconnects
    finally:
        for agent, _ in agents:
            agent.stop()
        relay.stop()


def _serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(coact_command("relay", "serve", "--data-dir", str(data_dir), "--port", str(port)),
                          capture_output=True, text=True, timeout=60, env={**TEST_ENV, "PATH": "/usr/bin:/bin"})


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_port_in_use_or_a_data_directory_in_use_is_one_clear_line(tmp_path: Path) -> None:
    relay = Relay(tmp_path / "relay")
    relay.start()
    try:
        port_taken = _one_clear_line(_serve(tmp_path / "other", relay.port))
        assert f"port {relay.port} on 127.0.0.1 is already in use" in port_taken
        assert "--port" in port_taken
        assert not (tmp_path / "other" / "relay.db").exists()  # it failed before opening anything

        dir_taken = _one_clear_line(_serve(tmp_path / "relay", free_port()))
        assert f"the data directory {tmp_path / 'relay'} is in use by relay process" in dir_taken
        assert relay.proc is not None
        assert str(relay.proc.pid) in dir_taken
        assert "still running or still stopping" in dir_taken
    finally:
        relay.stop()
