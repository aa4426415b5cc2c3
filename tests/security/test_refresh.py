"""Refresh-token rotation against real relays on SQLite and PostgreSQL (issue 3 item 4).

Reuse of a spent token revokes its whole family and leaves ``auth.refresh_reuse`` in
the audit — except the one case the grace window forgives: the *same* client (address)
presenting the token it spent a moment ago, whose successor is still unused. That
retry gets 401 and the family lives on (docs/decisions.md, "refresh reuse grace").
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness import PASSWORD, Relay, wait_for
from pg import BACKENDS, relay_on

GRACE_S = 2


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    env = {"COACT_REFRESH_REUSE_GRACE_S": str(GRACE_S)}
    with relay_on(request.param, tmp_path_factory.mktemp("refresh") / "data", env) as server:
        yield server


def refresh(relay: Relay, token: str, source: str = "127.0.0.1") -> tuple[int, Any]:
    """POST /auth/refresh from a chosen loopback address (Linux routes all of 127/8)."""
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", "/api/v1/auth/refresh", json.dumps({"refresh_token": token}),
                     {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        conn.close()


def audit_has(relay: Relay, token: str, kind: str, user_id: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        items = relay.api(token).ok("GET", "/api/v1/audit?limit=5000")["items"]
        return next((r for r in items if r["kind"] == kind and r["data"].get("user_id") == user_id), None)

    found: dict[str, Any] = wait_for(seen, timeout=10, what=f"audit event {kind}")
    return found


def test_rotation_spends_each_token_once(relay: Relay) -> None:
    _, user = relay.new_admin()
    status, pair = refresh(relay, user["refresh_token"])
    assert status == 200, pair
    assert pair["refresh_token"] != user["refresh_token"]
    status, again = refresh(relay, pair["refresh_token"])
    assert status == 200, again


def test_prompt_retry_from_the_same_client_is_refused_without_revoking(relay: Relay) -> None:
    _, user = relay.new_admin()
    status, pair = refresh(relay, user["refresh_token"])
    assert status == 200
    status, body = refresh(relay, user["refresh_token"])  # e.g. the answer was lost
    assert status == 401
    assert "already rotated" in body["detail"]
    status, body = refresh(relay, pair["refresh_token"])  # the session lives on
    assert status == 200, body


def test_reuse_from_another_address_revokes_the_family(relay: Relay) -> None:
    admin, user = relay.new_admin()
    status, pair = refresh(relay, user["refresh_token"])
    assert status == 200
    status, body = refresh(relay, user["refresh_token"], source="127.0.0.2")  # a thief's copy
    assert status == 401
    assert "revoked" in body["detail"]
    assert refresh(relay, pair["refresh_token"])[0] == 401  # the legitimate client is out too
    login = relay.api().ok("POST", "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    event = audit_has(relay, login["access_token"], "auth.refresh_reuse", user["id"])
    assert set(event["data"]) == {"user_id", "family_id"}
    assert admin.ok("GET", "/api/v1/me")["user"]["id"] == user["id"]  # access tokens are not sessions


def test_reuse_after_the_grace_window_revokes_the_family(relay: Relay) -> None:
    _, user = relay.new_admin()
    status, pair = refresh(relay, user["refresh_token"])
    assert status == 200
    time.sleep(GRACE_S + 0.5)
    status, body = refresh(relay, user["refresh_token"])
    assert status == 401
    assert "revoked" in body["detail"]
    assert refresh(relay, pair["refresh_token"])[0] == 401


def test_reuse_of_an_older_token_revokes_even_within_the_grace(relay: Relay) -> None:
    _, user = relay.new_admin()
    status, second = refresh(relay, user["refresh_token"])
    assert status == 200
    status, third = refresh(relay, second["refresh_token"])
    assert status == 200
    # The first token is not the immediately previous one any more.
    assert refresh(relay, user["refresh_token"])[0] == 401
    assert refresh(relay, third["refresh_token"])[0] == 401


def test_concurrent_refreshes_mint_one_successor(relay: Relay) -> None:
    _, user = relay.new_admin()
    barrier = threading.Barrier(8)
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        answer = refresh(relay, user["refresh_token"])
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [401] * 7, results
    winner = next(body for status, body in results if status == 200)
    # Same client, within the grace: the losers were refused, the winner's session lives.
    assert refresh(relay, winner["refresh_token"])[0] == 200


def test_concurrent_refreshes_from_two_addresses_leave_no_session(relay: Relay) -> None:
    _, user = relay.new_admin()
    barrier = threading.Barrier(2)
    results: list[tuple[int, Any]] = []

    def race(source: str) -> None:
        barrier.wait()
        results.append(refresh(relay, user["refresh_token"], source))

    threads = [threading.Thread(target=race, args=(s,)) for s in ("127.0.0.1", "127.0.0.3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(status for status, _ in results) == [200, 401]
    winner = next(body for status, body in results if status == 200)
    # Two holders of one token: no independent family survives, the winner's included.
    assert refresh(relay, winner["refresh_token"])[0] == 401


def test_logout_revokes_the_family(relay: Relay) -> None:
    api, user = relay.new_admin()
    status, pair = refresh(relay, user["refresh_token"])
    assert status == 200
    assert api.post("/api/v1/auth/logout", {"refresh_token": pair["refresh_token"]}).status == 204
    assert refresh(relay, pair["refresh_token"])[0] == 401


def test_a_refresh_token_is_not_an_access_token(relay: Relay) -> None:
    _, user = relay.new_admin()
    answer = relay.api(user["refresh_token"]).get("/api/v1/me")
    assert answer.status == 401
