"""Device connects are admitted a bounded number at a time (relay/admission.py).

Against a real relay allowing one connect at a time (``COACT_DEVICE_CONNECT_LIMIT=1``):

* a device's slot runs from its token request to its session's welcome; meanwhile
  another device's token request and WebSocket upgrade answer 503 with Retry-After,
  which the agent's own HTTP and WebSocket code read back;
* a failed token request gives its slot back at once, but never one its device
  already held (anyone can send a request naming a device);
* the agent keeps the appointment the relay gave it, late by up to a second and a quarter.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import pytest
from harness import Relay
from pg import relay_on
from principals import RawDevice
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from coact.agent import relay_client
from coact.agent.runtime import AgentOptions, reconnect_delay, retry_after_of
from coact.shared import keys
from coact.shared.protocol import auth_message


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_on("sqlite", tmp_path_factory.mktemp("relay") / "data", {"COACT_DEVICE_CONNECT_LIMIT": "1"}) as server:
        yield server


async def _welcomed(relay: Relay, device: RawDevice, token: str) -> None:
    """Open the agent socket with ``token``, prove the key, read the welcome, close."""
    async with connect(relay.url.replace("http://", "ws://") + "/api/v1/agent/ws",
                       additional_headers={"Authorization": f"Bearer {token}"}, compression=None) as ws:
        challenge = json.loads(await ws.recv())
        await ws.send(json.dumps({"v": 1, "type": "auth",
                                  "signature": keys.sign(device.key, auth_message(device.device_id, challenge["nonce"]))}))
        assert json.loads(await ws.recv())["type"] == "welcome"


def _token(device: RawDevice) -> str:
    return relay_client.device_token(device.relay_url, device.device_id, device.key)


def test_one_connect_at_a_time_the_rest_told_when_to_return(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    a, b, c = (RawDevice(relay.url, admin, name=name) for name in "abc")

    token_a = _token(a)  # a holds the slot until its session is welcomed
    # Anyone can send a request naming a's id; when its signature fails, a keeps its slot.
    forged_a = {**c.token_request(), "device_id": a.device_id}
    assert relay.api().post("/api/v1/devices/token", forged_a).status == 401
    busy = relay.api().post("/api/v1/devices/token", b.token_request())
    assert busy.status == 503, busy.body
    assert busy.headers["Content-Type"].startswith("application/problem+json")
    assert int(busy.headers["Retry-After"]) >= 1
    assert busy.body["retry_after"] == int(busy.headers["Retry-After"])
    with pytest.raises(relay_client.RelayHTTPError) as refused:
        _token(b)  # the agent's own client reads the same answer
    assert refused.value.status == 503
    assert retry_after_of(refused.value) == float(busy.headers["Retry-After"])

    asyncio.run(_welcomed(relay, a, token_a))  # the welcome gives the slot back
    token_b = _token(b)
    asyncio.run(_welcomed(relay, b, token_b))

    # A refused token request (a signature by the wrong key) gives its slot back at once.
    forged = {**c.token_request(), "device_id": a.device_id}
    assert relay.api().post("/api/v1/devices/token", forged).status == 401
    token_c = _token(c)  # c now holds the slot

    # b's token is still valid, but its upgrade finds no free slot: 503 before the socket opens.
    with pytest.raises(InvalidStatus) as upgrade:
        asyncio.run(_welcomed(relay, b, token_b))
    assert upgrade.value.response.status_code == 503
    hint = retry_after_of(upgrade.value)
    assert hint is not None
    assert hint >= 1
    asyncio.run(_welcomed(relay, c, token_c))  # and the gate is free again
    asyncio.run(_welcomed(relay, b, _token(b)))


def test_the_agent_keeps_its_appointment_late_by_up_to_a_second_and_a_quarter() -> None:
    options = AgentOptions(backoff_base_s=1.0, backoff_max_s=60.0)
    rng = random.Random(7)
    for attempt in range(3):
        delays = [reconnect_delay(attempt, options, rng, 8.0) for _ in range(500)]
        assert all(8.0 <= d <= 11.0 for d in delays)
        assert max(delays) - min(delays) > 2  # spread, not one instant for everyone
    # A longer back-off wins over a short Retry-After.
    assert max(reconnect_delay(8, options, rng, 1.0) for _ in range(200)) > 2.0
    # No Retry-After: the plain back-off.
    assert all(0 <= reconnect_delay(0, options, rng, None) <= 1.0 for _ in range(200))


def test_retry_after_values_the_agent_ignores() -> None:
    assert relay_client.parse_retry_after(None) is None
    assert relay_client.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert relay_client.parse_retry_after("-3") is None
    assert relay_client.parse_retry_after("7") == 7.0
    assert relay_client.parse_retry_after("99999") == 3600.0
    assert retry_after_of(OSError("connection refused")) is None


def test_slots_are_per_device_not_per_request(relay: Relay) -> None:
    """A device asking twice (its first answer lost) does not lock itself out."""
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    first = _token(device)
    second = _token(device)
    assert first != second
    asyncio.run(_welcomed(relay, device, second))
