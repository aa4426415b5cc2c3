"""The core promise, end to end: a real relay and real agents on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from harness import Api, Relay, run_cli, wait_for, wait_online, wait_task


def create_task(api: Api, device_id: str, action: str, **params: object) -> str:
    task = api.ok("POST", "/api/v1/tasks", {"device_id": device_id, "action": action, "params": params})
    # Straight to a device connected to this relay, queued for one that is not.
    assert task["status"] in ("dispatched", "queued")
    return str(task["id"])


def run_task(api: Api, device_id: str, action: str, **params: object) -> dict:
    return wait_task(api, create_task(api, device_id, action, **params))


def device_audit(api: Api, device_id: str) -> list[dict]:
    records: list[dict] = []
    cursor = None
    while True:
        query = f"/api/v1/audit?device_id={device_id}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        page = api.ok("GET", query)
        records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return records


def test_enroll_connect_and_every_file_action(relay: Relay, agent_factory, tmp_path: Path) -> None:
    admin, _user = relay.new_admin()
    agent, device_id, sandbox = agent_factory("files", admin)
    agent.start()
    wait_online(admin, device_id)
    device = wait_for(lambda: (d := admin.ok("GET", f"/api/v1/devices/{device_id}"))["telemetry"] and d,
                      what="the first heartbeat's telemetry")
    assert device["status"] == "active"
    assert device["telemetry"]["memory_percent"] > 0

    written = run_task(admin, device_id, "file.write", path=str(sandbox / "a.txt"), content="hello coact")
    assert written["status"] == "succeeded", written
    assert (sandbox / "a.txt").read_text() == "hello coact"
    assert written["result"]["output"]["sha256"] == hashlib.sha256(b"hello coact").hexdigest()

    read = run_task(admin, device_id, "file.read", path=str(sandbox / "a.txt"))
    assert read["result"]["output"]["content"] == "hello coact"
    read64 = run_task(admin, device_id, "file.read", path=str(sandbox / "a.txt"), encoding="base64")
    assert base64.b64decode(read64["result"]["output"]["content"]) == b"hello coact"

    stat = run_task(admin, device_id, "file.stat", path=str(sandbox / "a.txt"))
    assert stat["result"]["output"]["size"] == len("hello coact")
    digest = run_task(admin, device_id, "file.hash", path=str(sandbox / "a.txt"))
    assert digest["result"]["output"]["sha256"] == hashlib.sha256(b"hello coact").hexdigest()

    copied = run_task(admin, device_id, "file.copy", src=str(sandbox / "a.txt"), dst=str(sandbox / "b.txt"))
    assert copied["status"] == "succeeded", copied
    moved = run_task(admin, device_id, "file.move", src=str(sandbox / "b.txt"), dst=str(sandbox / "c.txt"))
    assert moved["status"] == "succeeded", moved
    assert not (sandbox / "b.txt").exists()
    assert (sandbox / "c.txt").read_text() == "hello coact"

    listing = run_task(admin, device_id, "file.list", path=str(sandbox))
    assert sorted(e["name"] for e in listing["result"]["output"]["entries"]) == ["a.txt", "c.txt"]

    deleted = run_task(admin, device_id, "file.delete", path=str(sandbox / "c.txt"))
    assert deleted["status"] == "succeeded", deleted
    assert not (sandbox / "c.txt").exists()


def test_denials_carry_reasons_and_touch_nothing(relay: Relay, agent_factory, tmp_path: Path) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("deny", admin)
    agent.start()
    wait_online(admin, device_id)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")

    denied = run_task(admin, device_id, "file.read", path=str(outside))
    assert denied["status"] == "failed"
    assert denied["result"]["denied"] is True
    assert "outside every read root" in denied["result"]["error"]
    traversal = run_task(admin, device_id, "file.write", path=f"{sandbox}/../outside.txt", content="owned", overwrite=True)
    assert traversal["status"] == "failed"
    assert outside.read_text() == "secret"
    not_allowed = run_task(admin, device_id, "system.info")
    assert not_allowed["status"] == "failed"
    assert "denied by local policy" in not_allowed["result"]["error"]

    # The agent uploads its audit after the result, so it may still be on its way. A
    # denial's last record is its policy decision, written with the result.
    kinds = wait_for(
        lambda: (k := [r["kind"] for r in device_audit(admin, device_id) if r["task_id"] == denied["id"]])
        and "policy.decision" in k and k,
        what="the denied task's policy decision in the audit",
    )
    assert "action.started" not in kinds


def test_offline_queueing_runs_once_when_the_agent_returns(relay: Relay, agent_factory) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("offline", admin)
    task_id = create_task(admin, device_id, "file.write", path=str(sandbox / "late.txt"), content="queued")
    assert admin.ok("GET", f"/api/v1/tasks/{task_id}")["status"] == "queued"
    agent.start()
    task = wait_task(admin, task_id)
    assert task["status"] == "succeeded", task
    assert (sandbox / "late.txt").read_text() == "queued"
    agent.stop()
    agent.start()
    wait_online(admin, device_id)
    starts = wait_for(
        lambda: [r for r in device_audit(admin, device_id) if r["task_id"] == task_id and r["kind"] == "action.started"],
        what="the action.started record to reach the audit store",
    )
    assert len(starts) == 1


def test_redelivered_task_never_runs_twice(relay: Relay, agent_factory, tmp_path: Path) -> None:
    """The relay loses track of a finished task (as after a crash between dispatch and
    result) and delivers it again: the agent answers from its journal instead of acting."""
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("redeliver", admin)
    agent.start()
    wait_online(admin, device_id)
    first = run_task(admin, device_id, "file.write", path=str(sandbox / "once.txt"), content="one")
    assert first["status"] == "succeeded"
    relay.stop()
    import sqlite3

    db = sqlite3.connect(relay.data_dir / "relay.db")
    with db:
        db.execute("UPDATE tasks SET status='queued', result=NULL, finished_at=NULL WHERE id=?", (first["id"],))
    db.close()
    (sandbox / "once.txt").write_text("changed by the user")
    relay.start()
    again = wait_task(admin, first["id"], timeout=40)
    assert again["status"] == "succeeded"
    assert again["result"]["output"] == first["result"]["output"]
    assert (sandbox / "once.txt").read_text() == "changed by the user"
    kinds = wait_for(
        lambda: [r["kind"] for r in device_audit(admin, device_id) if r["task_id"] == first["id"] and r["kind"] == "task.redelivered"],
        timeout=30, what="the redelivery audit record",
    )
    assert kinds == ["task.redelivered"]


def test_agent_killed_mid_task_reports_it_interrupted_and_never_reruns(relay: Relay, agent_factory) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("killed", admin)
    big = sandbox / "big.bin"
    with big.open("wb") as handle:  # sparse: hashing it takes a while, storing it does not
        handle.truncate(6 * 1024**3)
    agent.start()
    wait_online(admin, device_id)
    task_id = create_task(admin, device_id, "file.hash", path=str(big))
    wait_for(lambda: admin.ok("GET", f"/api/v1/tasks/{task_id}")["status"] == "running", what="task running")
    agent.kill()
    agent.start()
    task = wait_task(admin, task_id, timeout=30)
    assert task["status"] == "failed"
    assert "interrupted" in task["result"]["error"]
    starts = wait_for(
        lambda: [r for r in device_audit(admin, device_id) if r["task_id"] == task_id and r["kind"] == "action.started"],
        what="audit of the interrupted task",
    )
    assert len(starts) == 1


def test_cancel_and_bad_input_answers(relay: Relay, agent_factory) -> None:
    admin, _ = relay.new_admin()
    _agent, device_id, sandbox = agent_factory("cancel", admin)
    task_id = create_task(admin, device_id, "file.stat", path=str(sandbox))
    cancelled = admin.ok("POST", f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled["status"] == "cancelled"
    again = admin.post(f"/api/v1/tasks/{task_id}/cancel")
    assert again.status == 409
    assert again.headers["Content-Type"].startswith("application/problem+json")

    unknown = admin.post("/api/v1/tasks", {"device_id": device_id, "action": "file.explode", "params": {}})
    assert unknown.status == 400
    assert "unknown action" in unknown.body["detail"]
    assert "coact actions ls" in unknown.body["detail"]
    wrong_type = admin.post("/api/v1/tasks", {"device_id": device_id, "action": "file.list", "params": {"path": 7}})
    assert wrong_type.status == 400
    extra = admin.post("/api/v1/tasks", {"device_id": device_id, "action": "file.list", "params": {}, "bogus": 1})
    assert extra.status == 400
    assert "bogus" in extra.body["detail"]
    malformed = admin.request("POST", "/api/v1/tasks", raw=b"{not json")
    assert malformed.status == 400
    for number in (b"NaN", b"Infinity", b"-Infinity"):
        non_finite = admin.request("POST", "/api/v1/tasks", raw=b'{"device_id": "%s", "action": "file.write", '
                                   b'"params": {"path": "x", "content": "", "n": %s}}' % (device_id.encode(), number))
        assert non_finite.status == 400
        assert f"{number.decode().lstrip('-')} is not a JSON number" in non_finite.body["detail"]
    huge = admin.request("POST", "/api/v1/tasks", raw=b'{"x":"' + b"a" * (2 * 1024 * 1024) + b'"}')
    assert huge.status == 413
    for bad in ("..%2f..%2fetc", "%2e%2e", "tsk_%00", "dev_x"):
        assert admin.get(f"/api/v1/tasks/{bad}").status == 404
    listing = admin.ok("GET", f"/api/v1/tasks?device_id={device_id}")
    assert [t["id"] for t in listing["items"]] == [task_id]


def test_enrollment_codes_are_single_use(relay: Relay, tmp_path: Path) -> None:
    admin, _ = relay.new_admin()
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    run_cli("agent", "enroll", "--relay", relay.url, "--code", code, "--data-dir", str(tmp_path / "one"))
    second = run_cli("agent", "enroll", "--relay", relay.url, "--code", code, "--data-dir", str(tmp_path / "two"), check=False)
    assert second.returncode != 0
    assert "already used" in second.stderr
    assert not (tmp_path / "two" / "identity.json").exists()
    assert not (tmp_path / "two" / "device.key").exists()
    key_mode = (tmp_path / "one" / "device.key").stat().st_mode & 0o777
    assert key_mode == 0o600


def test_agent_refuses_a_relay_that_cannot_prove_its_identity(relay: Relay, agent_factory, tmp_path: Path) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, _sandbox = agent_factory("pinned", admin)
    identity_path = agent.data_dir / "identity.json"
    identity = json.loads(identity_path.read_text())
    from coact.shared import keys

    identity["relay_public_key"] = keys.public_key_b64(keys.generate_private_key())
    identity_path.write_text(json.dumps(identity))
    agent.start()
    wait_for(lambda: "did not prove the identity pinned" in agent.log(), what="the agent to refuse the relay")
    assert admin.ok("GET", f"/api/v1/devices/{device_id}")["online"] is False


@pytest.mark.parametrize("path", ["/api/v1/devices", "/api/v1/tasks", "/api/v1/audit", "/api/v1/me"])
def test_unauthenticated_calls_are_refused(relay: Relay, path: str) -> None:
    answer = relay.api().get(path)
    assert answer.status == 401
    assert answer.body["status"] == 401
    assert answer.headers["Content-Type"].startswith("application/problem+json")


def test_orgs_are_isolated(relay: Relay, agent_factory) -> None:
    alice, _ = relay.new_admin()
    bob, _ = relay.new_admin()
    _agent, device_id, sandbox = agent_factory("isolated", alice)
    task_id = create_task(alice, device_id, "file.stat", path=str(sandbox))
    assert bob.get(f"/api/v1/devices/{device_id}").status == 404
    assert bob.get(f"/api/v1/tasks/{task_id}").status == 404
    assert bob.post(f"/api/v1/tasks/{task_id}/cancel").status == 404
    assert bob.post("/api/v1/tasks", {"device_id": device_id, "action": "file.stat", "params": {"path": "/"}}).status == 404
    assert bob.ok("GET", "/api/v1/devices")["items"] == []
    assert all(r["device_id"] != device_id for r in bob.ok("GET", "/api/v1/audit")["items"])


def test_timeouts_and_expiry(relay: Relay, agent_factory) -> None:
    admin, _ = relay.new_admin()
    agent, device_id, sandbox = agent_factory("clock", admin)
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    expiring = admin.ok("POST", "/api/v1/tasks", {
        "device_id": device_id, "action": "file.stat", "params": {"path": str(sandbox)}, "expires_at": soon,
    })
    expired = wait_task(admin, expiring["id"], timeout=15)
    assert expired["status"] == "expired"
    assert expired["result"] is None

    big = sandbox / "slow.bin"
    with big.open("wb") as handle:
        handle.truncate(8 * 1024**3)
    agent.start()
    wait_online(admin, device_id)
    slow = admin.ok("POST", "/api/v1/tasks", {
        "device_id": device_id, "action": "file.hash", "params": {"path": str(big)}, "timeout_s": 0.3,
    })
    timed_out = wait_task(admin, slow["id"], timeout=30)
    assert timed_out["status"] == "timed_out"
    assert "did not finish within 0.3 s" in timed_out["result"]["error"]
    past = admin.post("/api/v1/tasks", {"device_id": device_id, "action": "file.stat",
                                        "params": {"path": str(sandbox)}, "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status == 400
    assert "past" in past.body["detail"]
