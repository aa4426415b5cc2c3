"""Signup and user creation without an email-existence oracle, signup throttles, and
the bounded password-hashing pool, against real relays (issue 14 items 5 and 6).

Requests come from chosen loopback addresses (127.0.0.x) so that the per-address
signup limit is told apart from the relay-wide one.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness import PASSWORD, Relay, wait_for
from pg import BACKENDS, relay_on

LIMITS = {"COACT_SIGNUP_MAX_PER_ADDRESS": "3", "COACT_SIGNUP_MAX_PER_RELAY": "10", "COACT_SIGNUP_WINDOW_S": "3600",
          "COACT_USER_CREATE_REFUSALS_PER_ORG": "2"}


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_on(request.param, tmp_path_factory.mktemp("signup") / "data", LIMITS) as server:
        yield server


def post(relay: Relay, path: str, body: Any, source: str) -> tuple[int, Any, dict[str, str]]:
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"null"), dict(answer.getheaders())
    finally:
        conn.close()


def signup(relay: Relay, email: str, source: str, password: str = PASSWORD) -> tuple[int, Any, dict[str, str]]:
    return post(relay, "/api/v1/auth/signup", {"email": email, "password": password, "org_name": "x"}, source)


def relay_event_kinds(api: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(r["kind"], r["data"]) for r in api.ok("GET", "/api/v1/audit?limit=5000")["items"]]


def test_signup_answers_the_same_for_new_and_existing_emails(relay: Relay) -> None:
    admin, user = relay.new_admin()  # from 127.0.0.1
    fresh = f"fresh-{uuid.uuid4().hex[:10]}@example.com"
    new = signup(relay, fresh, "127.0.3.1")
    taken = signup(relay, user["email"].upper(), "127.0.3.2", password="an attacker's own passphrase")
    assert new[0] == taken[0] == 202, (new, taken)
    assert new[1]["detail"] == taken[1]["detail"]
    assert set(new[1]) == set(taken[1]) == {"email", "detail"}
    assert new[1]["email"] == fresh
    assert taken[1]["email"] == user["email"]
    assert new[2]["Content-Type"] == taken[2]["Content-Type"]
    # The existing account is untouched, the new one exists, and the attempt is audited.
    assert post(relay, "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD}, "127.0.3.3")[0] == 200
    assert post(relay, "/api/v1/auth/login", {"email": fresh, "password": PASSWORD}, "127.0.3.3")[0] == 200
    wait_for(lambda: ("user.signup_refused", {"user_id": user["id"]}) in relay_event_kinds(admin),
             what="the refused signup in the account's org audit")


def test_admin_cannot_tell_another_orgs_email_from_its_own_and_refusals_are_limited(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    other, other_user = relay.new_admin()
    mine = f"mine-{uuid.uuid4().hex[:10]}@example.com"
    admin.ok("POST", "/api/v1/admin/users", {"email": mine, "role": "viewer", "password": PASSWORD})
    answers = [admin.post("/api/v1/admin/users", {"email": email, "role": "viewer", "password": PASSWORD})
               for email in (mine, other_user["email"])]
    assert [a.status for a in answers] == [409, 409]
    assert answers[0].body == answers[1].body
    assert answers[0].body["detail"] == "this email cannot be given to a new user"
    # Two refusals per org per window (LIMITS): the third attempt waits, new emails too.
    third = admin.post("/api/v1/admin/users", {"email": f"n-{uuid.uuid4().hex[:8]}@example.com",
                                               "role": "viewer", "password": PASSWORD})
    assert third.status == 429, third.body
    assert 0 < int(third.headers["Retry-After"]) <= 3600
    # Another org is not affected; the refusals are in the caller's audit.
    other.ok("POST", "/api/v1/admin/users", {"email": f"o-{uuid.uuid4().hex[:8]}@example.com",
                                              "role": "viewer", "password": PASSWORD})
    wait_for(lambda: sum(k == "user.create_refused" for k, _ in relay_event_kinds(admin)) == 2,
             what="two user.create_refused events")


def test_signups_are_limited_per_address_and_per_relay(relay: Relay) -> None:
    # The module's tests run in order; the two above made 5 signups (3 from 127.0.0.1).
    def attempt(source: str) -> int:
        return signup(relay, f"s-{uuid.uuid4().hex[:10]}@example.com", source)[0]

    assert [attempt("127.0.4.1") for _ in range(3)] == [202, 202, 202]
    status, body, headers = signup(relay, f"s-{uuid.uuid4().hex[:10]}@example.com", "127.0.4.1")
    assert status == 429, body
    assert 0 < int(headers["Retry-After"]) <= 3600
    assert body["retry_after"] == int(headers["Retry-After"])
    # A weak password is refused without counting; other addresses go on until the
    # relay-wide limit: 10 signups, 8 of them made by now.
    assert signup(relay, "weak@example.com", "127.0.4.2", password="short")[0] == 400
    assert [attempt("127.0.4.2"), attempt("127.0.4.3"), attempt("127.0.4.9")] == [202, 202, 429]


@pytest.fixture(scope="module")
def costly_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    # Production argon2 cost, one hashing worker and no queue: the pool is full while one hash runs.
    env = {"COACT_PASSWORD_TIME_COST": "3", "COACT_PASSWORD_MEMORY_KIB": "65536", "COACT_PASSWORD_PARALLELISM": "4",
           "COACT_PASSWORD_WORKERS": "1", "COACT_PASSWORD_QUEUE": "0"}
    with relay_on("sqlite", tmp_path_factory.mktemp("costly") / "data", env) as server:
        yield server


def test_a_full_hashing_pool_answers_503_with_retry_after_and_other_clients_are_served(costly_relay: Relay) -> None:
    admin, _ = costly_relay.new_admin()
    logins = [{"email": f"nobody-{n}@example.com", "password": PASSWORD} for n in range(12)]
    with ThreadPoolExecutor(len(logins)) as pool:
        answers = list(pool.map(lambda body: post(costly_relay, "/api/v1/auth/login", body, "127.0.5.1"), logins))
    statuses = sorted(a[0] for a in answers)
    assert 401 in statuses, statuses
    assert 503 in statuses, statuses
    assert set(statuses) == {401, 503}
    busy = next(a for a in answers if a[0] == 503)
    assert busy[1]["title"] == "Service unavailable"
    assert int(busy[2]["Retry-After"]) >= 1
    assert admin.get("/api/v1/me").status == 200
