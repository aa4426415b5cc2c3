"""A real agent (in process) against a relay that sends what no correct relay would.

The agent trusts its relay for nothing it does (docs/THREAT_MODEL.md), and it must not
be stopped by it either: a forged audit ack, a task it cannot journal or a malformed
frame each cost that frame, never the session or the process (issue 14, decision 49).
The stand-in relay below speaks wire protocol v1 over a real loopback WebSocket; it
holds the relay key the agent pinned, as a compromised or buggy relay would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.agent.config import DataDir, Identity
from coact.agent.runtime import Agent, AgentOptions
from coact.policy.document import render_sandbox_policy
from coact.shared import keys
from coact.shared.wire import relay_challenge_message

HOSTILE_FRAMES: list[dict[str, Any]] = [
    # An expiry the agent cannot read: it ended the agent before (_plan raised in the task group).
    {"type": "task", "task": {"id": "tsk_bad_expiry", "action": "file.write", "params": {}, "timeout_s": 5,
                              "expires_at": "next tuesday"}},
    # Params with no canonical form: begin_task raised.
    {"type": "task", "task": {"id": "tsk_big_pid", "action": "app.close", "params": {"pid": 100000000000000000001},
                              "timeout_s": 5}},
    {"type": "result_ack", "task_id": "tsk_never_ran"},
    {"type": "error", "code": "whatever", "detail": "x"},
    {"type": "welcome", "device_id": "someone else", "audit_seq": 0, "audit_hash": "0" * 64},
]


def data_dir(tmp_path: Path, relay_key: Ed25519PrivateKey, device_key: Ed25519PrivateKey, relay_url: str,
             sandbox: Path) -> DataDir:
    """An enrolled agent's data directory, pinned to ``relay_key``."""
    directory = DataDir(tmp_path / "agent")
    directory.ensure()
    directory.write_private_key(device_key)
    relay_public = keys.public_key_b64(relay_key)
    directory.write_identity(Identity(
        device_id="dev_x", org_id="org_x", relay_url=relay_url, relay_public_key=relay_public,
        relay_fingerprint=keys.fingerprint(relay_public), name="x", enrolled_at="2026-01-01T00:00:00Z"))
    directory.policy_path.write_text(render_sandbox_policy(str(sandbox)))
    return directory


async def test_a_hostile_relay_cannot_stop_the_agent(tmp_path: Path) -> None:
    relay_key, device_key = keys.generate_private_key(), keys.generate_private_key()
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    forged_acks = 0

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 600})

    async def socket(request: web.Request) -> web.WebSocketResponse:
        nonlocal forged_acks
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        nonce = secrets.token_hex(16)
        signature = keys.sign(relay_key, relay_challenge_message("dev_x", nonce))
        await ws.send_str(json.dumps({"v": 1, "type": "challenge", "nonce": nonce, "relay_signature": signature}))
        await ws.receive()  # the agent's auth
        await ws.send_str(json.dumps({"v": 1, "type": "welcome", "device_id": "dev_x", "audit_seq": 0,
                                      "audit_hash": "0" * 64}))
        for frame in HOSTILE_FRAMES:
            await ws.send_str(json.dumps({"v": 1, **frame}))
        await ws.send_str(json.dumps({"v": 1, "type": "task", "task": {
            "id": "tsk_good", "action": "file.write", "params": {"path": str(sandbox / "ok.txt"), "content": "ok"},
            "timeout_s": 5}}))
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
            body = json.loads(message.data)
            if body["type"] == "audit_batch":
                # An ack naming a record the agent does not hold: ack_audit refused it
                # with a ValueError, which ended the agent.
                forged_acks += 1
                await ws.send_str(json.dumps({"v": 1, "type": "audit_ack", "last_seq": 1, "head_hash": "ab" * 32}))
            elif body["type"] == "task_result":
                await results.put(body)
        return ws

    app = web.Application()
    app.router.add_post("/api/v1/devices/token", token)
    app.router.add_get("/api/v1/agent/ws", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    directory = data_dir(tmp_path, relay_key, device_key, f"http://127.0.0.1:{port}", sandbox)
    agent = Agent(directory, options=AgentOptions(heartbeat_s=60))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        seen = {}
        while "tsk_good" not in seen:
            result = await asyncio.wait_for(results.get(), 20)
            seen[result["task_id"]] = result
        assert seen["tsk_good"]["status"] == "succeeded"
        assert (sandbox / "ok.txt").read_text() == "ok"
        assert forged_acks >= 1
        assert not running.done()
        assert agent.connected
        # The refused frames ran nothing and journaled nothing.
        assert agent.store.task_result("tsk_bad_expiry") is None
        assert agent.store.task_result("tsk_big_pid") is None
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
        agent.close()
        await runner.cleanup()


async def test_lifecycle_records_a_full_disk_kept_out_are_written_when_it_has_room(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    directory = data_dir(tmp_path, keys.generate_private_key(), keys.generate_private_key(),
                         "http://127.0.0.1:9", sandbox)
    agent = Agent(directory)
    store = agent.store
    try:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLITE_FULL from here on
        before = store.audit_head()
        for attempt in range(1, 4):  # each would need a new page: the record is bigger than one
            await agent.audit("agent.reconnect", {"attempt": attempt, "error": "e" * 5000})
        assert store.audit_head() == before  # nothing written, nothing raised
        assert str(store.full).startswith("disk full")
        store._db.execute("PRAGMA max_page_count = 1073741823")
        await agent.audit("agent.stop", {})
        records = store.pending_audit(100)[-4:]
        assert [(r["kind"], r["data"].get("attempt")) for r in records] == [
            ("agent.reconnect", 1), ("agent.reconnect", 2), ("agent.reconnect", 3), ("agent.stop", None)]
        assert all("held_since" in r["data"] for r in records[:3])
        assert "held_since" not in records[3]["data"]
        assert store.full is None
    finally:
        agent.close()
