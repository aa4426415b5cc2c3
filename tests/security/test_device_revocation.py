"""Device tokens and revocation against real processes.

* a captured token request replayed byte for byte is refused;
* revoking a device closes its live socket at once, every later token request fails,
  and the real agent process says so and exits non-zero instead of retrying;
* a revocation made through one relay ends the device's session held by another
  relay process sharing the database (the hub re-checks the device's status).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Agent, Relay, run_cli, wait_for, wait_online
from principals import RawDevice
from websockets.exceptions import ConnectionClosed


def test_a_replayed_token_request_is_refused(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    request = device.token_request()
    assert relay.api().post("/api/v1/devices/token", request).status == 200
    replay = relay.api().post("/api/v1/devices/token", request)
    assert replay.status == 401
    assert replay.headers["Content-Type"].startswith("application/problem+json")
    assert replay.body["detail"] == "device token request was replayed"
    # The same nonce under a fresh signature and timestamp is still a replay.
    assert relay.api().post("/api/v1/devices/token", device.token_request(request["nonce"])).status == 401
    # Another device's id with this device's signature proves nothing.
    other = RawDevice(relay.url, admin)
    forged = {**device.token_request(), "device_id": other.device_id}
    assert relay.api().post("/api/v1/devices/token", forged).body["detail"] == "device token request refused"


def test_revocation_ends_the_agent(relay: Relay, tmp_path: Path) -> None:
    admin, _ = relay.new_admin()
    agent, device_id = Agent.enroll(relay, admin, tmp_path / "agent", tmp_path / "sandbox")
    agent.start()
    try:
        wait_online(admin, device_id)
        revoked = admin.ok("POST", f"/api/v1/devices/{device_id}/revoke")
        started = time.monotonic()
        assert revoked["status"] == "revoked"
        wait_online(admin, device_id, online=False, timeout=10)
        print(f"revoke -> socket closed (device offline) in {time.monotonic() - started:.3f} s")
        # The agent reports the revocation and stops for good: no retry loop.
        wait_for(lambda: not agent.running, timeout=10, what="the agent to exit")
        assert agent.proc is not None
        assert agent.proc.returncode not in (0, None)
        print(f"revoke -> agent exited in {time.monotonic() - started:.3f} s")
        log = agent.log()
        assert "the relay revoked this device" in log, log[-2000:]
        assert "ask an admin to re-enroll it" in log, log[-2000:]
        assert "connection to relay failed" not in log.split("revoked")[-1]
        # `coact agent status` says it was revoked, and when, not "connected False".
        status = json.loads(run_cli("agent", "status", "--data-dir", str(agent.data_dir), "--output", "json").stdout)
        assert status["connected"] is False
        assert status["revoked_at"]
        assert status["last_error"].startswith(f"revoked by the relay at {status['revoked_at']}")
        text = run_cli("agent", "status", "--data-dir", str(agent.data_dir)).stdout
        assert "revoked by the relay at" in text
    finally:
        agent.stop()
    # Every later token request fails, however correctly signed.
    key_dir = tmp_path / "agent"
    from coact.agent.config import DataDir
    from coact.agent.errors import RevokedError
    from coact.agent.relay_client import device_token

    with pytest.raises(RevokedError):
        device_token(relay.url, device_id, DataDir(key_dir).private_key())
    # Started again, the agent refuses at once and exits non-zero.
    agent.start()
    wait_for(lambda: not agent.running, timeout=20, what="the restarted agent to exit")
    assert agent.proc is not None
    assert agent.proc.returncode != 0
    assert agent.log().count("revoked") >= 2
    agent.stop()


async def _read_until_closed(ws: Any, frames: list[dict[str, Any]], wait_s: float) -> None:
    while True:
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), wait_s)))


async def test_revocation_closes_a_raw_session_with_4403(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    ws, _welcome = await device.session()
    admin.ok("POST", f"/api/v1/devices/{device.device_id}/revoke")
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        await _read_until_closed(ws, frames, 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
    assert {"type": "error", "code": "revoked"}.items() <= frames[-1].items()


@pytest.fixture
def second_relay(relay: Relay, tmp_path: Path) -> Iterator[Relay]:
    """Another relay process on the same state database and keys (a scaled-out
    deployment), with its own audit engine and relay id."""
    data = tmp_path / "relay-2"
    data.mkdir(mode=0o700)
    shutil.copytree(relay.data_dir / "keys", data / "keys")
    other = Relay(data, database_url=relay.database_url, env={"COACT_RELAY_ID": "relay-2"})
    other.start()
    yield other
    other.stop()


async def test_revocation_through_another_relay_ends_the_session(relay: Relay, second_relay: Relay) -> None:
    admin, _ = relay.new_admin()
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    device = RawDevice(second_relay.url, admin, code=code)
    ws, _welcome = await device.session()
    admin.ok("POST", f"/api/v1/devices/{device.device_id}/revoke")  # relay 1 holds no socket for it
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        await _read_until_closed(ws, [], 20)
    print(f"revoke on relay 1 -> session on relay 2 closed in {time.monotonic() - started:.3f} s")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
