"""Login throttling, answers that do not reveal accounts, and rehash on login, against
real relays on SQLite and PostgreSQL (issue 3 item 5).

The relay under test allows 3 failures per account and 6 per address in a 900 s
window. Requests come from chosen loopback addresses (127.0.0.x), which is how the
per-address limit is told apart from the per-account one.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness import PASSWORD, Relay
from pg import BACKENDS, fresh_pg_database, relay_on
from sqlalchemy import text

from coact.relay.storage import open_engine

LIMITS = {"COACT_LOGIN_MAX_FAILURES": "3", "COACT_LOGIN_MAX_PER_ADDRESS": "6", "COACT_LOGIN_WINDOW_S": "900"}


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_on(request.param, tmp_path_factory.mktemp("limits") / "data", LIMITS) as server:
        yield server


def call(relay: Relay, path: str, body: Any, source: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, json.dumps(body), headers)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"null"), dict(answer.getheaders())
    finally:
        conn.close()


def login(relay: Relay, email: str, password: str, source: str = "127.0.0.1") -> tuple[int, Any, dict[str, str]]:
    return call(relay, "/api/v1/auth/login", {"email": email, "password": password}, source)


def test_unknown_user_and_wrong_password_answer_identically(relay: Relay) -> None:
    _, user = relay.new_admin()
    wrong = login(relay, user["email"], "not the password at all", "127.0.1.1")
    unknown = login(relay, f"nobody-{uuid.uuid4().hex}@example.com", "not the password at all", "127.0.1.1")
    assert wrong[0] == unknown[0] == 401
    assert wrong[1] == unknown[1]
    assert wrong[1]["detail"] == "email or password is wrong"
    same_headers = ("Content-Type", "WWW-Authenticate")
    assert [wrong[2].get(h) for h in same_headers] == [unknown[2].get(h) for h in same_headers]


def test_account_limit_applies_from_every_address_and_a_success_resets_it(relay: Relay) -> None:
    _, user = relay.new_admin()
    email = user["email"]
    for source in ("127.0.2.1", "127.0.2.2"):
        assert login(relay, email, "wrong password, guess one", source)[0] == 401
    assert login(relay, email, PASSWORD, "127.0.2.3")[0] == 200  # resets the account
    for source in ("127.0.2.1", "127.0.2.2", "127.0.2.3"):
        assert login(relay, email, "wrong password, guess two", source)[0] == 401
    # Three failures: even the right password, from a fresh address, must wait.
    status, body, headers = login(relay, email, PASSWORD, "127.0.2.4")
    assert status == 429, body
    assert body["title"] == "Too many requests"
    assert 0 < int(headers["Retry-After"]) <= 900
    assert body["retry_after"] == int(headers["Retry-After"])
    # Other accounts are not affected.
    _, other = relay.new_admin()
    assert login(relay, other["email"], PASSWORD, "127.0.2.4")[0] == 200


def test_unknown_accounts_are_throttled_like_real_ones(relay: Relay) -> None:
    _, user = relay.new_admin()
    unknown = f"ghost-{uuid.uuid4().hex}@example.com"
    answers = []
    for email in (user["email"], unknown):
        for i in range(3):
            assert login(relay, email, "wrong password", f"127.0.3.{i + 1}")[0] == 401
        answers.append(login(relay, email, "wrong password", "127.0.3.9"))
    real, ghost = answers
    assert real[0] == ghost[0] == 429
    assert {k: v for k, v in real[1].items() if k not in ("detail", "retry_after")} == \
        {k: v for k, v in ghost[1].items() if k not in ("detail", "retry_after")}
    assert "Retry-After" in ghost[2]


def test_address_limit_counts_failures_across_accounts(relay: Relay) -> None:
    _, user = relay.new_admin()
    for i in range(6):
        assert login(relay, f"spray-{i}-{uuid.uuid4().hex}@example.com", "password123456", "127.0.4.1")[0] == 401
    status, _, headers = login(relay, user["email"], PASSWORD, "127.0.4.1")
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    assert login(relay, user["email"], PASSWORD, "127.0.4.2")[0] == 200  # another address is fine


def test_password_change_guesses_count_against_the_account(relay: Relay) -> None:
    _, user = relay.new_admin()
    token = login(relay, user["email"], PASSWORD, "127.0.5.1")[1]["access_token"]
    body = {"current_password": "a wrong guess!", "new_password": "a brand new passphrase"}
    for _ in range(3):
        assert call(relay, "/api/v1/me/password", body, "127.0.5.1", token)[0] == 403
    assert call(relay, "/api/v1/me/password", body, "127.0.5.1", token)[0] == 429
    assert login(relay, user["email"], PASSWORD, "127.0.5.2")[0] == 429


def stored_hash(backend: str, data_dir: Path, database_url: str | None, email: str) -> str:
    if backend == "sqlite":
        with sqlite3.connect(data_dir / "relay.db") as db:
            return str(db.execute("SELECT password_hash FROM users WHERE email = ?", (email,)).fetchone()[0])

    assert database_url is not None
    engine = open_engine(database_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT password_hash FROM users WHERE email = :e"), {"e": email}).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_login_rehashes_when_the_parameters_change(backend: str, tmp_path: Path) -> None:
    with fresh_pg_database() if backend == "postgres" else nullcontext() as database_url:
        data_dir = tmp_path / "data"
        first = Relay(data_dir, database_url=database_url, env={"COACT_PASSWORD_TIME_COST": "1"})
        first.start()
        try:
            _, user = first.new_admin()
        finally:
            first.stop()
        before = stored_hash(backend, data_dir, database_url, user["email"])
        assert ",t=1," in before
        second = Relay(data_dir, database_url=database_url, env={"COACT_PASSWORD_TIME_COST": "2"}, port=first.port)
        second.start()
        try:
            assert second.api().post("/api/v1/auth/login", {"email": user["email"], "password": "wrong password!"}).status == 401
            assert stored_hash(backend, data_dir, database_url, user["email"]) == before  # only on success
            second.api().ok("POST", "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
            after = stored_hash(backend, data_dir, database_url, user["email"])
            assert ",t=2," in after
            assert after != before
            second.api().ok("POST", "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
        finally:
            second.stop()

