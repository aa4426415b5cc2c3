"""A device that misbehaves on the WebSocket gets a specific answer and changes nothing.

These tests speak the wire protocol directly with a real enrolled identity, so they
can send what a correct agent never would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Agent, Api, Relay
from pg import BACKENDS, relay_on
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from coact.agent.config import DataDir
from coact.agent.relay_client import device_token
from coact.shared import keys
from coact.shared.chain import GENESIS, ChainHead, make_record, sign_batch
from coact.shared.clock import from_rfc3339
from coact.shared.protocol import auth_message


class Device:
    def __init__(self, relay: Relay, data_dir: Path) -> None:
        directory = DataDir(data_dir)
        self.relay = relay
        self.identity = directory.identity()
        self.key = directory.private_key()
        self.device_id = self.identity.device_id

    def token(self) -> str:
        return device_token(self.relay.url, self.device_id, self.key)

    async def open(self, *, sign_with: Any = None) -> ClientConnection:
        ws = await connect(
            self.relay.url.replace("http://", "ws://") + "/api/v1/agent/ws",
            additional_headers={"Authorization": f"Bearer {self.token()}"},
            compression=None, max_size=None, ping_interval=None,
        )
        challenge = json.loads(await ws.recv())
        signature = keys.sign(sign_with or self.key, auth_message(self.device_id, challenge["nonce"]))
        await ws.send(json.dumps({"v": 1, "type": "auth", "signature": signature}))
        return ws

    async def session(self) -> ClientConnection:
        ws = await self.open()
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        return ws


async def next_of(ws: ClientConnection, *types: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] in types:
            return message


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """These checks run against real relays on SQLite and on PostgreSQL."""
    with relay_on(request.param, tmp_path_factory.mktemp(f"wire-{request.param}") / "data") as server:
        yield server


@pytest.fixture
async def devices(relay: Relay, tmp_path: Path) -> AsyncIterator[tuple[Api, Device, Device]]:
    admin, _ = relay.new_admin()
    _a, _ = Agent.enroll(relay, admin, tmp_path / "a", tmp_path / "sa")
    _b, _ = Agent.enroll(relay, admin, tmp_path / "b", tmp_path / "sb")
    return admin, Device(relay, tmp_path / "a"), Device(relay, tmp_path / "b")


def chain(device_id: str, count: int, head: ChainHead = GENESIS) -> list[dict[str, Any]]:
    records = []
    for i in range(count):
        record = make_record(head, device_id=device_id, kind="test.event", ts="2026-11-26T00:00:00.000000Z", data={"i": i})
        records.append(record)
        head = ChainHead(record["seq"], record["hash"])
    return records


def batch(device: Device, records: list[dict[str, Any]], key: Any = None) -> str:
    last = records[-1]
    signature = sign_batch(key or device.key, device.device_id, ChainHead(last["seq"], last["hash"]))
    return json.dumps({"v": 1, "type": "audit_batch", "records": records, "signature": signature})


async def test_audit_batches_are_checked_before_anything_is_stored(devices: tuple[Api, Device, Device]) -> None:
    admin, a, b = devices
    ws = await a.session()
    records = chain(a.device_id, 5)

    await ws.send(batch(a, records[2:]))  # starts at seq 3: a gap
    nack = await next_of(ws, "audit_ack", "audit_nack")
    assert nack == {**nack, "type": "audit_nack", "code": "gap", "expected_seq": 1}

    await ws.send(batch(a, records, key=keys.generate_private_key()))  # signed by another key
    nack = await next_of(ws, "audit_ack", "audit_nack")
    assert (nack["type"], nack["code"]) == ("audit_nack", "invalid")

    tampered = [dict(r) for r in records]
    tampered[1]["data"] = {"i": 99}
    await ws.send(batch(a, tampered))
    nack = await next_of(ws, "audit_ack", "audit_nack")
    assert nack["code"] == "invalid"
    assert nack["detail"].startswith("record 2 was altered")

    await ws.send(batch(a, chain(b.device_id, 2)))  # records of another device
    nack = await next_of(ws, "audit_ack", "audit_nack")
    assert nack["code"] == "foreign_record"

    audit = admin.ok("GET", f"/api/v1/audit?device_id={a.device_id}")
    assert audit["items"] == []

    await ws.send(batch(a, records))
    ack = await next_of(ws, "audit_ack", "audit_nack")
    assert ack == {**ack, "type": "audit_ack", "last_seq": 5, "head_hash": records[-1]["hash"]}
    await ws.send(batch(a, records))  # redelivery: acknowledged, stored once
    assert (await next_of(ws, "audit_ack", "audit_nack"))["type"] == "audit_ack"
    forked = chain(a.device_id, 5)
    forked[4] = make_record(ChainHead(4, records[3]["hash"]), device_id=a.device_id, kind="other", ts="x", data={})
    await ws.send(batch(a, forked))
    nack = await next_of(ws, "audit_ack", "audit_nack")
    assert nack["code"] == "fork"
    stored = admin.ok("GET", f"/api/v1/audit?device_id={a.device_id}")["items"]
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5]
    assert [r["hash"] for r in stored] == [r["hash"] for r in records]
    await ws.close()


async def test_results_for_another_devices_task_are_refused(devices: tuple[Api, Device, Device]) -> None:
    admin, a, b = devices
    task = admin.ok("POST", "/api/v1/tasks", {"device_id": b.device_id, "action": "file.stat", "params": {"path": "/"}})
    ws = await a.session()
    await ws.send(json.dumps({
        "v": 1, "type": "task_result", "task_id": task["id"], "status": "succeeded", "ok": True,
        "output": {"forged": True}, "finished_at": "2026-11-26T00:00:00.000000Z",
    }))
    error = await next_of(ws, "error", "result_ack")
    assert error["type"] == "error"
    assert "not a task of this device" in error["detail"]
    assert admin.ok("GET", f"/api/v1/tasks/{task['id']}")["result"] is None
    await ws.close()


async def test_a_result_with_a_non_finite_number_is_refused_and_the_honest_one_stored(
    devices: tuple[Api, Device, Device],
) -> None:
    # JSON has no NaN; a result holding one could never be stored on PostgreSQL, and
    # the agent would resend it on every reconnect.
    admin, a, _b = devices
    task = admin.ok("POST", "/api/v1/tasks", {"device_id": a.device_id, "action": "file.stat", "params": {"path": "/"}})
    ws = await a.session()
    await ws.send(json.dumps({
        "v": 1, "type": "task_result", "task_id": task["id"], "status": "succeeded", "ok": True,
        "output": {"ratio": float("nan")}, "finished_at": "2026-11-26T00:00:00.000000Z",
    }))
    error = await next_of(ws, "error", "result_ack")
    assert error["type"] == "error"
    assert "NaN is not a JSON number" in error["detail"]
    assert admin.ok("GET", f"/api/v1/tasks/{task['id']}")["result"] is None
    await ws.send(_result(task["id"]))
    assert (await next_of(ws, "result_ack"))["task_id"] == task["id"]
    assert admin.ok("GET", f"/api/v1/tasks/{task['id']}")["result"]["ok"] is True
    await ws.close()


def _result(task_id: str) -> str:
    return json.dumps({
        "v": 1, "type": "task_result", "task_id": task_id, "status": "succeeded", "ok": True,
        "output": {}, "finished_at": "2026-11-26T00:00:00.000000Z",
    })


async def test_receipts_become_running_or_fold_into_the_result_and_stay_with_their_device(
    devices: tuple[Api, Device, Device],
) -> None:
    """A receipt is written as `running` shortly after it arrives, unless the result
    comes first; either way the task's start is the receipt time, and a receipt
    another device sends for this task changes nothing."""
    admin, a, b = devices
    ws, intruder = await a.session(), await b.session()

    def create() -> str:
        body = {"device_id": a.device_id, "action": "file.stat", "params": {"path": "/"}}
        return str(admin.ok("POST", "/api/v1/tasks", body)["id"])

    slow = create()
    assert (await next_of(ws, "task"))["task"]["id"] == slow
    await intruder.send(json.dumps({"v": 1, "type": "task_received", "task_id": slow}))
    await asyncio.sleep(0.3)
    assert admin.ok("GET", f"/api/v1/tasks/{slow}")["status"] == "dispatched"  # not by another device
    await ws.send(json.dumps({"v": 1, "type": "task_received", "task_id": slow}))
    await asyncio.sleep(0.3)
    running = admin.ok("GET", f"/api/v1/tasks/{slow}")
    assert running["status"] == "running"
    assert running["started_at"] is not None

    fast = create()
    assert (await next_of(ws, "task"))["task"]["id"] == fast
    await intruder.send(json.dumps({"v": 1, "type": "task_received", "task_id": fast}))
    await asyncio.sleep(0.1)  # the intruder's receipt is in the relay before a's
    await ws.send(json.dumps({"v": 1, "type": "task_received", "task_id": fast}))
    await ws.send(_result(fast))
    assert (await next_of(ws, "result_ack"))["task_id"] == fast
    done = admin.ok("GET", f"/api/v1/tasks/{fast}")
    assert done["status"] == "succeeded"
    assert done["started_at"] <= done["updated_at"]
    # The start is a's receipt, not the intruder's, which the relay had 0.1 s earlier.
    assert (from_rfc3339(done["started_at"]) - from_rfc3339(done["dispatched_at"])).total_seconds() >= 0.09
    await asyncio.sleep(0.3)
    assert admin.ok("GET", f"/api/v1/tasks/{fast}")["status"] == "succeeded"  # no late `running`
    await ws.close()
    await intruder.close()


async def test_malformed_frames_get_errors_then_the_socket_closes(devices: tuple[Api, Device, Device]) -> None:
    _admin, a, _b = devices
    ws = await a.session()
    for frame in ("{not json", json.dumps({"v": 1, "type": "launch_missiles"}), json.dumps({"v": 2, "type": "heartbeat"}),
                  json.dumps({"v": 1, "type": "heartbeat", "telemetry": {}, "extra": 1})):
        await ws.send(frame)
        error = await next_of(ws, "error")
        assert error["code"] == "protocol_error"
    await ws.send("{}")
    await next_of(ws, "error")
    with pytest.raises(ConnectionClosed) as closed:
        await next_of(ws, "error")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400


async def test_oversized_frames_close_the_socket(devices: tuple[Api, Device, Device]) -> None:
    _admin, a, _b = devices
    ws = await a.session()
    frame = json.dumps({"v": 1, "type": "heartbeat", "telemetry": {"x": "a" * (5 * 1024 * 1024)}})

    async def send_and_read() -> None:  # the relay may close while we are still sending
        await ws.send(frame)
        await next_of(ws, "error")

    with pytest.raises(ConnectionClosed) as closed:
        await send_and_read()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_token_without_the_key_does_not_open_a_session(devices: tuple[Api, Device, Device]) -> None:
    _admin, a, _b = devices
    ws = await a.open(sign_with=keys.generate_private_key())
    with pytest.raises(ConnectionClosed) as closed:
        await next_of(ws, "welcome")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    with pytest.raises(InvalidStatus) as refused:
        await connect(a.relay.url.replace("http://", "ws://") + "/api/v1/agent/ws")
    assert refused.value.response.status_code == 401


async def test_a_chain_moved_through_another_relay_is_checked_against_the_stored_head(
    relay: Relay, tmp_path: Path
) -> None:
    """A session keeps its chain head between batches. If the device meanwhile sent
    batches through another relay, this session's next batch is checked against the
    stored head: accepted when it continues the chain there, with no spurious nack."""
    admin, _ = relay.new_admin()
    Agent.enroll(relay, admin, tmp_path / "a", tmp_path / "sa")
    data = tmp_path / "relay-2"
    data.mkdir(mode=0o700)
    shutil.copytree(relay.data_dir / "keys", data / "keys")
    other = Relay(data, database_url=relay.database_url, env={"COACT_RELAY_ID": "relay-2"})
    other.start()
    try:
        here, there = Device(relay, tmp_path / "a"), Device(other, tmp_path / "a")
        records = chain(here.device_id, 6)
        ws = await here.session()
        await ws.send(batch(here, records[:2]))
        assert (await next_of(ws, "audit_ack", "audit_nack"))["last_seq"] == 2
        elsewhere = await there.session()
        await elsewhere.send(batch(there, records[2:4]))
        assert (await next_of(elsewhere, "audit_ack", "audit_nack"))["last_seq"] == 4
        await elsewhere.close()
        await ws.send(batch(here, records[4:]))
        reply = await next_of(ws, "audit_ack", "audit_nack")
        assert reply == {**reply, "type": "audit_ack", "last_seq": 6, "head_hash": records[5]["hash"]}
        await ws.close()
    finally:
        other.stop()
