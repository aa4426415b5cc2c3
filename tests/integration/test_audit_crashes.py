"""Audit survives crashes: kill the agent mid-upload and the relay mid-ingest, and
every record still lands in ClickHouse exactly once, with every chain verifying."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import Agent, Api, Relay, run_cli, wait_for, wait_online

from coact.shared.auditcheck import verify_audit

TASKS = 150


def all_records(api: Api) -> list[dict]:
    records: list[dict] = []
    cursor = None
    while True:
        page = api.ok("GET", "/api/v1/audit?limit=5000" + (f"&cursor={cursor}" if cursor else ""))
        records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return records


def pending_audit(agent: Agent) -> int:
    status = run_cli("agent", "status", "--data-dir", str(agent.data_dir), "--output", "json")
    return int(json.loads(status.stdout)["pending_audit"])


def raw_counts(audit_dir: Path, device_id: str) -> tuple[int, int]:
    """Rows as stored, without FINAL: duplicates would show here. Run in a subprocess
    because chDB serves one data directory per process."""
    script = (
        "import clickhouse_connect, sys, json\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{audit_dir}')\n"
        "rows = c.query('SELECT count(), uniqExact(seq) FROM default.audit_records WHERE device_id = {d:String}',"
        f" parameters={{'d': {device_id!r}}}).result_rows\n"
        "print(json.dumps([int(rows[0][0]), int(rows[0][1])]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    total, unique = json.loads(out.stdout.strip().splitlines()[-1])
    return total, unique


def test_kills_during_upload_and_ingest_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    relay = Relay(tmp_path / "relay")
    relay.start()
    try:
        admin, _ = relay.new_admin()
        agent, device_id = Agent.enroll(relay, admin, tmp_path / "agent", tmp_path / "sandbox")
        agent.start()
        wait_online(admin, device_id)
        for i in range(TASKS):
            admin.ok("POST", "/api/v1/tasks", {"device_id": device_id, "action": "file.list", "params": {"path": str(tmp_path / "sandbox")}})
            if i == TASKS // 3:
                agent.kill()  # mid-execution and mid-upload
                agent.start()
            if i == 2 * TASKS // 3:
                relay.kill()  # mid-ingest
                time.sleep(0.5)
                relay.start()
        wait_for(
            lambda: admin.ok("GET", f"/api/v1/tasks?device_id={device_id}&status=queued")["items"] == []
            and admin.ok("GET", f"/api/v1/tasks?device_id={device_id}&status=dispatched")["items"] == []
            and admin.ok("GET", f"/api/v1/tasks?device_id={device_id}&status=running")["items"] == [],
            timeout=120, interval=0.5, what="every task to settle",
        )
        wait_for(lambda: pending_audit(agent) == 0, timeout=60, interval=0.5, what="the agent outbox to drain")

        records = all_records(admin)
        mine = sorted(r["seq"] for r in records if r["device_id"] == device_id)
        assert mine == list(range(1, len(mine) + 1)), "device chain must be gap-free and duplicate-free"
        assert len(mine) > TASKS * 3
        batches = admin.ok("GET", "/api/v1/audit/batches")["items"]
        public_keys = admin.ok("GET", "/api/v1/audit/keys")["keys"]
        # The relay's own events are still being forwarded; verify what has landed.
        report = verify_audit(records, batches, public_keys)
        device_findings = [f for f in report.findings if f.device_id == device_id]
        assert device_findings == []
        kinds = {r["kind"] for r in records if r["device_id"] == device_id}
        assert {"agent.start", "task.received", "policy.decision", "action.started", "action.finished", "agent.reconnect"} <= kinds
    finally:
        agent.stop()
        relay.stop()
    total, unique = raw_counts(relay.data_dir / "audit", device_id)
    assert total == unique == len(mine)
