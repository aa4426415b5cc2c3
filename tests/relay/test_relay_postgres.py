"""The scale-out storage mode end to end: a real relay process on PostgreSQL, a real agent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness import Agent, Api, Relay, wait_for, wait_online, wait_task
from sqlalchemy import text

from coact.relay.storage import open_engine
from coact.shared.chain import GENESIS, verify_chain

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def pg_relay(tmp_path_factory: pytest.TempPathFactory, pg_database_url: str) -> Iterator[Relay]:
    server = Relay(tmp_path_factory.mktemp("pg-relay") / "data", database_url=pg_database_url)
    server.start()
    yield server
    server.stop()


def audit(api: Api, device_id: str | None = None) -> list[dict[str, Any]]:
    """Every audit record of the caller's org (of one chain if ``device_id``)."""
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "/api/v1/audit?limit=1000" + (f"&device_id={quote(device_id)}" if device_id else "")
        query += f"&cursor={quote(cursor)}" if cursor else ""
        page = api.ok("GET", query)
        records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return records


def test_file_write_through_a_relay_on_postgres(pg_relay: Relay, pg_database_url: str, tmp_path: Path) -> None:
    admin, user = pg_relay.new_admin()
    me = admin.ok("GET", "/api/v1/me")["user"]
    assert (me["id"], me["role"]) == (user["id"], "admin")

    sandbox = tmp_path / "sandbox"
    agent, device_id = Agent.enroll(pg_relay, admin, tmp_path / "agent", sandbox)
    agent.start()
    try:
        wait_online(admin, device_id)
        task = admin.ok("POST", "/api/v1/tasks", {
            "device_id": device_id, "action": "file.write",
            "params": {"path": str(sandbox / "pg.txt"), "content": "stored in postgres"},
        })
        assert task["status"] == "dispatched"  # the device is connected to this relay
        done = wait_task(admin, task["id"], timeout=40)
        assert done["status"] == "succeeded", done
        assert (sandbox / "pg.txt").read_text() == "stored in postgres"
        assert done["result"]["output"]["sha256"] == hashlib.sha256(b"stored in postgres").hexdigest()

        def task_audited() -> list[dict[str, Any]] | None:
            records = audit(admin, device_id)
            return records if any(r["task_id"] == task["id"] for r in records) else None

        records = wait_for(task_audited, timeout=30, what="the agent's audit records of the task")
        assert {r["device_id"] for r in records} == {device_id}
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        verify_chain(records, start=GENESIS, device_id=device_id)

        # The relay's own events went through the PostgreSQL outbox to the audit store.
        def relay_audited() -> list[dict[str, Any]] | None:
            records = [r for r in audit(admin) if r["device_id"].startswith("relay:")]
            settled = [r for r in records if r["task_id"] == task["id"] and r["data"].get("to") == "succeeded"]
            return records if settled else None

        relay_records = wait_for(relay_audited, timeout=30, what="the relay's audit records of the task")
        (relay_chain,) = {r["device_id"] for r in relay_records}
        verify_chain(relay_records, start=GENESIS, device_id=relay_chain)
        assert relay_records[0]["kind"] == "user.signup"
        assert "device.enrolled" in [r["kind"] for r in relay_records]
    finally:
        agent.stop()

    listed = admin.ok("GET", f"/api/v1/tasks?device_id={device_id}")["items"]
    assert [t["id"] for t in listed] == [task["id"]]
    # The relay's state really lives in PostgreSQL, not in a SQLite file beside it.
    assert pg_task_status(pg_database_url, task["id"]) == "succeeded"
    assert not (pg_relay.data_dir / "relay.db").exists()
    assert pg_relay.running, pg_relay.log()[-4000:]


def pg_task_status(url: str, task_id: str) -> str | None:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            status: str | None = conn.execute(text("SELECT status FROM tasks WHERE id = :t"), {"t": task_id}).scalar()
            return status
    finally:
        engine.dispose()
