"""Browser-facing safety against a real relay.

* The user event stream ``GET /api/v1/ws`` checks ``Origin`` before the upgrade: a
  cross-site page cannot ride a user's token into it (MeshCentral CVE-2024-26135,
  cross-site WebSocket hijacking).
* Agent-reported strings are data: the JSON API returns them verbatim as
  ``application/json`` with ``nosniff`` and a ``default-src 'none'`` CSP, and the one
  HTML page (/docs) carries a strict CSP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Api, Relay, wait_for
from principals import RawDevice, add_user, disable_user
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from coact.relay.api.stream import normalize_origin, origin_allowed
from coact.relay.settings import Settings

EVIL = "https://evil.example"
XSS = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(document.cookie)>'


def _ws_url(relay: Relay) -> str:
    return relay.url.replace("http://", "ws://") + "/api/v1/ws"


async def _open(relay: Relay, token: str | None, *, origin: str | None = None, subprotocol: bool = False) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token and not subprotocol else {}
    return await connect(
        _ws_url(relay), additional_headers=headers, origin=origin,  # type: ignore[arg-type]
        subprotocols=["bearer", token] if subprotocol and token else None,  # type: ignore[list-item]
        compression=None, open_timeout=10,
    )


async def _refused(relay: Relay, token: str | None, status: int, **kw: object) -> dict[str, object]:
    with pytest.raises(InvalidStatus) as refused:
        await _open(relay, token, **kw)  # type: ignore[arg-type]
    response = refused.value.response
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, object] = json.loads(response.body or b"{}")
    return body


async def _next_event(ws: ClientConnection, kind: str) -> dict[str, object]:
    while True:
        event: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if event["type"] == kind:
            return event


# -- the Origin check ------------------------------------------------------------------


@pytest.mark.parametrize("subprotocol", [False, True], ids=["authorization-header", "bearer-subprotocol"])
@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1.evil.example", "file://", "http://localhost"])
async def test_cross_origin_upgrade_with_a_valid_token_is_403(relay: Relay, origin: str, subprotocol: bool) -> None:
    admin, _ = relay.new_admin()
    body = await _refused(relay, admin.token, 403, origin=origin, subprotocol=subprotocol)
    assert body["code"] == "origin_not_allowed"


async def test_no_token_is_401_and_same_origin_or_no_origin_connects(relay: Relay) -> None:
    await _refused(relay, None, 401, origin=relay.url)
    admin, _ = relay.new_admin()
    for kw in ({"origin": relay.url}, {}, {"origin": relay.url, "subprotocol": True}):
        ws = await _open(relay, admin.token, **kw)  # type: ignore[arg-type]
        if kw.get("subprotocol"):
            assert ws.subprotocol == "bearer"  # the token itself is never echoed
        await ws.close()


async def test_stream_carries_the_orgs_events_only(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    outsider, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    mine = await _open(relay, admin.token, origin=relay.url)
    theirs = await _open(relay, outsider.token)
    task = admin.ok("POST", "/api/v1/tasks", {"device_id": device.device_id, "action": "file.stat", "params": {"path": "/"}})
    event = await _next_event(mine, "task")
    assert event == {"type": "task", "task_id": task["id"], "device_id": device.device_id, "status": "queued"}
    session, _ = await device.session()
    assert (await _next_event(mine, "presence"))["device_id"] == device.device_id
    await session.close()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(theirs.recv(), 1.0)
    await mine.close()
    await theirs.close()


async def test_the_stream_accepts_no_messages(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    ws = await _open(relay, admin.token)
    await ws.send(json.dumps({"type": "subscribe", "org_id": "org_someone_else"}))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400


async def test_a_disabled_users_token_cannot_open_the_stream(relay: Relay) -> None:
    admin, admin_user = relay.new_admin()
    viewer, viewer_user = add_user(relay, admin, admin_user, "viewer")
    await (await _open(relay, viewer.token)).close()  # opens fine before
    disable_user(relay, admin, viewer_user["id"])
    await _refused(relay, viewer.token, 401)


async def test_one_account_opens_a_bounded_number_of_streams(relay: Relay) -> None:
    """Each stream may hold megabytes of unsent events for a slow reader, so one
    account's open streams are bounded; closing one makes room again."""
    admin, _ = relay.new_admin()
    other, _ = relay.new_admin()
    opened = [await _open(relay, admin.token) for _ in range(Settings().event_streams_per_user)]
    body = await _refused(relay, admin.token, 429)
    assert "event_streams_per_user" in str(body["detail"])
    await (await _open(relay, other.token)).close()  # another account is not affected
    await opened.pop().close()
    again = await wait_for_open(relay, admin.token)
    for ws in [*opened, again]:
        await ws.close()


async def wait_for_open(relay: Relay, token: str) -> ClientConnection:
    """Open a stream once the relay has counted a just-closed one out (it does so as
    the closing handshake ends, which the client may see first)."""
    statuses = []
    for _ in range(100):
        try:
            return await _open(relay, token)
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the closed stream was never counted out: {sorted(set(statuses))}")


@pytest.fixture(scope="module")
def allowlist_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    server = Relay(tmp_path_factory.mktemp("origins") / "data",
                   env={"COACT_ALLOWED_ORIGINS": "https://console.example.com, http://localhost:3000"})
    server.start()
    yield server
    server.stop()


async def test_allowlisted_origins_connect_others_do_not(allowlist_relay: Relay) -> None:
    admin, _ = allowlist_relay.new_admin()
    for origin in ("https://console.example.com", "HTTPS://Console.Example.com:443", "http://localhost:3000"):
        await (await _open(allowlist_relay, admin.token, origin=origin)).close()
    for origin in (EVIL, "https://console.example.com.evil.example", "http://localhost:3001", "https://localhost:3000"):
        await _refused(allowlist_relay, admin.token, 403, origin=origin)


def test_origin_rules() -> None:
    settings = Settings(data_dir=Path("/nonexistent"), public_url="https://relay.example.com",
                        allowed_origins=("https://ui.example.com",))
    assert origin_allowed(None, settings)
    assert origin_allowed("https://relay.example.com", settings)
    assert origin_allowed("https://relay.example.com:443", settings)
    assert origin_allowed("https://ui.example.com", settings)
    for bad in ("null", "", "https://relay.example.com.evil", "http://relay.example.com", "https://ui.example.com/x",
                "https://user@ui.example.com", "javascript:alert(1)", "https://ui.example.com:99999"):
        assert not origin_allowed(bad, settings), bad
    assert normalize_origin("HTTP://[::1]:80") == "http://[::1]"
    with pytest.raises(ValueError, match="allowed_origins"):
        Settings(allowed_origins=("https://ui.example.com/",))


# -- agent-reported strings are data -----------------------------------------------------


async def test_agent_reported_strings_come_back_verbatim_as_json(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin, name=XSS, platform=XSS_ATTR[:60])
    ws, _ = await device.session()
    await ws.send(json.dumps({"v": 1, "type": "heartbeat", "telemetry": {"hostname": XSS, "os": XSS_ATTR}}))
    await ws.close()
    # Heartbeats are written in batches (and at disconnect): wait for this one to land.
    await asyncio.to_thread(wait_for, lambda: admin.get(f"/api/v1/devices/{device.device_id}").body["telemetry"],
                            15, 0.1, "the heartbeat's telemetry")
    for path in (f"/api/v1/devices/{device.device_id}", "/api/v1/devices"):
        answer = await asyncio.to_thread(admin.get, path)
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        found = answer.body if "items" not in answer.body else answer.body["items"][0]
        assert found["name"] == XSS
        assert found["platform"] == XSS_ATTR[:60]
        if path.endswith(device.device_id):
            assert found["telemetry"] == {"hostname": XSS, "os": XSS_ATTR}


@pytest.mark.parametrize("path", [
    "/healthz", "/openapi.json", "/docs", "/docs/init.js", "/docs/assets/swagger-ui.css",
    "/.well-known/jwks.json", "/api/v1/me", "/api/v1/no-such-route", "/api/v1/devices/..%2Fx",
])
def test_every_response_has_nosniff_and_a_csp(relay: Relay, path: str) -> None:
    answer = Api(relay.url).get(path)
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    csp = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    content_type = answer.headers["Content-Type"]
    if content_type.startswith("text/html"):
        assert path == "/docs", "the only HTML the relay serves is /docs"
        assert "script-src 'self';" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
    else:
        assert path == "/docs" or "text/html" not in content_type
