"""One suite that every relay storage backend must pass: SQLite and PostgreSQL.

Each test opens ``coact.relay.storage.Store`` on a real database with a fake clock,
and isolates itself by creating its own orgs and using its own relay id (PostgreSQL
tests of a module share one fresh database). Security-relevant changes must leave a
relay audit event in the org's relay chain, so most tests end by reading that chain
back and verifying it from genesis.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fakes import FakeClock
from sqlalchemy import func, select, update

from coact.relay import schema
from coact.relay.errors import Conflict, Gone, NotFound
from coact.relay.migrations import MIGRATIONS, migrate
from coact.relay.storage import TOUCH_SLICE, USER_CACHE_S, Row, Store, open_engine
from coact.shared import keys
from coact.shared.chain import GENESIS, ChainHead, verify_chain
from coact.shared.clock import to_rfc3339


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url


def relay_key() -> str:
    return keys.public_key_b64(keys.generate_private_key())


async def open_store(url: str, clock: FakeClock, relay_id: str | None = None) -> Store:
    return await Store.open(url, clock, relay_id or f"rly_{secrets.token_hex(6)}", relay_key())


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await open_store(database_url, clock)
    yield opened
    await opened.close()


# -- helpers ---------------------------------------------------------------------------


async def new_org(store: Store, name: str = "org") -> Row:
    """A fresh org with its admin; returns the admin user row."""
    return await store.create_org_with_admin(f"{name}-{secrets.token_hex(6)}@example.com", "argon2-hash", name)


async def new_device(store: Store, org_id: str, user_id: str = "usr_x", tags: list[str] | None = None) -> Row:
    code_hash = secrets.token_hex(32)
    await store.create_enrollment_code(org_id, user_id, code_hash, tags or [], ttl_s=600)
    return await store.enroll_device(code_hash, "box", "linux", secrets.token_hex(16))


async def new_task(store: Store, org_id: str, device_id: str, **changes: Any) -> Row:
    values: dict[str, Any] = {
        "org_id": org_id, "device_id": device_id, "action": "file.write",
        "params": {"path": "/tmp/x", "content": "hi"}, "risk": {"level": "low", "score": 1},
        "status": "queued", "created_by": "usr_x", "timeout_s": 60.0,
        "expires_at": store.later(3600), **changes,
    }
    return await store.create_task(**values)


async def relay_chain(store: Store, org_id: str) -> list[dict[str, Any]]:
    """The org's pending relay events, checked to form one chain from genesis."""
    chain_id = store.relay_chain_id(org_id)
    rows = await store.pending_relay_events(100_000)
    records = [row["record"] for row in rows if row["chain_id"] == chain_id]
    assert [row["seq"] for row in rows if row["chain_id"] == chain_id] == [r["seq"] for r in records]
    head = verify_chain(records, start=GENESIS, device_id=chain_id)
    assert head.seq == len(records)
    return records


async def kinds(store: Store, org_id: str) -> list[str]:
    return [record["kind"] for record in await relay_chain(store, org_id)]


async def count(store: Store, table: Any, *where: Any) -> int:
    def read() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

    return await asyncio.to_thread(read)


# -- migrations ------------------------------------------------------------------------


async def test_migrations_are_idempotent(database_url: str, clock: FakeClock) -> None:
    first = await open_store(database_url, clock)
    second = await open_store(database_url, clock)
    try:
        assert await asyncio.to_thread(migrate, second.engine) == []
        with second.engine.connect() as conn:
            rows = conn.execute(select(schema.schema_migrations)).all()
        assert [(r.version, r.name) for r in rows] == [(v, name) for v, name, _ in MIGRATIONS]
        user = await new_org(first)
        assert await second.user_by_id(user["org_id"], user["id"]) == user
    finally:
        await first.close()
        await second.close()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("pg_fresh_database_url")
    return url


async def test_relays_starting_together_migrate_once(empty_database_url: str) -> None:
    # Several relays (or a relay and a CLI command) may open an empty database at once.
    engines = [open_engine(empty_database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(asyncio.to_thread(migrate, engine) for engine in engines))
        assert sorted(applied) == [[], [], [], [v for v, _, _ in MIGRATIONS]]
        with engines[0].connect() as conn:
            versions = conn.execute(select(schema.schema_migrations.c.version)).scalars().all()
        assert versions == [v for v, _, _ in MIGRATIONS]
    finally:
        for engine in engines:
            engine.dispose()


def test_relays_opening_a_new_sqlite_file_together_all_start(tmp_path: Any) -> None:
    # A connection switching the file to WAL while another migrates it was told
    # "database is locked" at once, busy_timeout notwithstanding (about one start in
    # twelve with four relays): many rounds make a regression show.
    for round_ in range(25):
        engines = [open_engine(f"sqlite:///{tmp_path / f'new-{round_}.db'}") for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                applied = list(pool.map(migrate, engines))
            assert sorted(applied) == [[], [], [], [v for v, _, _ in MIGRATIONS]]
        finally:
            for engine in engines:
                engine.dispose()


# -- orgs and users --------------------------------------------------------------------


async def test_signup_creates_org_admin_and_audit_event(store: Store, clock: FakeClock) -> None:
    user = await store.create_org_with_admin("alice@example.com", "hash-a", "Acme")
    assert user["email"] == "alice@example.com"
    assert user["role"] == "admin"
    assert user["disabled"] is False
    assert user["created_at"] == to_rfc3339(clock.now())
    events = await relay_chain(store, user["org_id"])
    assert [(e["kind"], e["data"]) for e in events] == [
        ("user.signup", {"user_id": user["id"], "role": "admin"})
    ]
    assert await store.relay_chain_keys(user["org_id"]) == {
        store.relay_chain_id(user["org_id"]): store.relay_audit_key
    }


async def test_duplicate_email_is_a_conflict_and_writes_nothing(store: Store) -> None:
    email = f"dup-{secrets.token_hex(6)}@example.com"
    first = await store.create_org_with_admin(email, "hash-1", "first")
    orphan_name = f"second-{secrets.token_hex(6)}"
    with pytest.raises(Conflict):
        await store.create_org_with_admin(email, "hash-2", orphan_name)
    assert await count(store, schema.orgs, schema.orgs.c.name == orphan_name) == 0
    assert await count(store, schema.users, schema.users.c.email == email) == 1
    kept = await store.user_by_email(email)
    assert kept is not None
    assert (kept["id"], kept["password_hash"]) == (first["id"], "hash-1")
    # The failed signup's audit event was rolled back with it: no chain for an org that is not.
    orphan_chains = await count(
        store, schema.relay_chains, schema.relay_chains.c.org_id.not_in(select(schema.orgs.c.id))
    )
    assert orphan_chains == 0


async def test_users_are_scoped_to_their_org(store: Store) -> None:
    alice, bob = await new_org(store, "a"), await new_org(store, "b")
    assert alice["org_id"] != bob["org_id"]
    assert await store.user_by_id(alice["org_id"], alice["id"]) == alice
    assert await store.user_by_id(bob["org_id"], alice["id"]) is None
    assert await store.user_by_id(alice["org_id"], bob["id"]) is None
    found = await store.user_by_email(alice["email"])
    assert found is not None
    assert (found["id"], found["org_id"]) == (alice["id"], alice["org_id"])
    assert await store.user_by_email("nobody@example.com") is None


# -- refresh tokens --------------------------------------------------------------------


async def test_refresh_token_rotation_and_reuse_revokes_the_family(store: Store) -> None:
    user = await new_org(store)
    first, sibling = secrets.token_hex(32), secrets.token_hex(32)
    family = await store.issue_refresh_token(user, first, ttl_s=3600)
    assert await store.issue_refresh_token(user, sibling, ttl_s=3600, family_id=family) == family

    outcome, row = await store.consume_refresh_token(first)
    assert outcome == "ok"
    assert row is not None
    assert (row["user_id"], row["org_id"], row["family_id"]) == (user["id"], user["org_id"], family)

    outcome, row = await store.consume_refresh_token(first)
    assert outcome == "reused"
    assert row is not None
    assert row["family_id"] == family
    assert await store.consume_refresh_token(sibling) == ("invalid", None)
    revoked = schema.refresh_tokens.c.revoked_at.is_not(None)
    assert await count(store, schema.refresh_tokens, schema.refresh_tokens.c.family_id == family, revoked) == 2

    events = await relay_chain(store, user["org_id"])
    assert events[-1]["kind"] == "auth.refresh_reuse"
    assert events[-1]["data"] == {"user_id": user["id"], "family_id": family}


async def test_token_minted_into_a_revoked_family_is_dead(store: Store) -> None:
    # The refresh endpoint consumes, then mints the successor in a second transaction;
    # a reuse (or logout) landing in between revokes the family. The successor must not
    # escape that revocation.
    user = await new_org(store)
    first, successor = secrets.token_hex(32), secrets.token_hex(32)
    family = await store.issue_refresh_token(user, first, ttl_s=3600)
    assert (await store.consume_refresh_token(first))[0] == "ok"
    assert (await store.consume_refresh_token(first))[0] == "reused"
    await store.issue_refresh_token(user, successor, ttl_s=3600, family_id=family)
    assert await store.consume_refresh_token(successor) == ("invalid", None)


async def test_expired_and_unknown_refresh_tokens_are_invalid(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    token = secrets.token_hex(32)
    await store.issue_refresh_token(user, token, ttl_s=60)
    clock.advance(60)
    assert await store.consume_refresh_token(token) == ("invalid", None)
    assert await store.consume_refresh_token(secrets.token_hex(32)) == ("invalid", None)
    clock.advance(-1)  # a second before expiry it was still good
    assert (await store.consume_refresh_token(token))[0] == "ok"


async def test_a_session_ends_ttl_after_login_however_often_it_refreshes(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    first = secrets.token_hex(32)
    family = await store.issue_refresh_token(user, first, ttl_s=60)
    token = first
    for _ in range(5):  # refresh every 10 s
        clock.advance(10)
        outcome, _row = await store.consume_refresh_token(token)
        assert outcome == "ok"
        token = secrets.token_hex(32)
        await store.issue_refresh_token(user, token, ttl_s=60, family_id=family)
    clock.advance(10)  # 60 s after login
    assert await store.consume_refresh_token(token) == ("invalid", None)


async def test_concurrent_consumes_of_one_token_yield_exactly_one_ok(store: Store) -> None:
    user = await new_org(store)
    token = secrets.token_hex(32)
    await store.issue_refresh_token(user, token, ttl_s=3600)
    outcomes = [o for o, _ in await asyncio.gather(*(store.consume_refresh_token(token) for _ in range(5)))]
    assert outcomes.count("ok") == 1
    assert set(outcomes) - {"ok"} <= {"reused", "invalid"}
    assert "reused" in outcomes


async def test_two_relays_consume_one_token_exactly_one_ok(database_url: str, clock: FakeClock) -> None:
    # Two relay processes share the database: only the database can arbitrate.
    one, two = await open_store(database_url, clock), await open_store(database_url, clock)
    try:
        user = await new_org(one)
        token = secrets.token_hex(32)
        await one.issue_refresh_token(user, token, ttl_s=3600)
        outcomes = [o for o, _ in await asyncio.gather(one.consume_refresh_token(token), two.consume_refresh_token(token))]
        assert sorted(outcomes) == ["ok", "reused"]
    finally:
        await one.close()
        await two.close()


async def test_logout_revokes_the_family_for_its_owner_only(store: Store) -> None:
    user = await new_org(store)
    token = secrets.token_hex(32)
    await store.issue_refresh_token(user, token, ttl_s=3600)
    assert await store.revoke_refresh_family(token, "usr_someone_else") is False
    assert await store.revoke_refresh_family(token, user["id"]) is True
    assert await store.consume_refresh_token(token) == ("invalid", None)
    assert (await kinds(store, user["org_id"]))[-1] == "auth.logout"


# -- enrollment and devices ------------------------------------------------------------


async def test_enrollment_code_is_single_use(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    code_hash = secrets.token_hex(32)
    code = await store.create_enrollment_code(user["org_id"], user["id"], code_hash, ["lab", "linux"], ttl_s=600)
    assert code["expires_at"] == store.later(600)
    public_key = secrets.token_hex(16)
    device = await store.enroll_device(code_hash, "box-1", "linux", public_key)
    assert device["org_id"] == user["org_id"]
    assert device["tags"] == ["lab", "linux"]
    assert (device["status"], device["public_key"], device["enrolled_at"]) == ("active", public_key, store.now())
    with pytest.raises(Gone, match="already used"):
        await store.enroll_device(code_hash, "box-2", "linux", secrets.token_hex(16))
    with pytest.raises(Gone, match="not valid"):
        await store.enroll_device(secrets.token_hex(32), "box-3", "linux", secrets.token_hex(16))
    assert [d["id"] for d in await store.list_devices(user["org_id"], 10, None)] == [device["id"]]
    events = await relay_chain(store, user["org_id"])
    assert [e["kind"] for e in events] == ["user.signup", "enrollment_code.created", "device.enrolled"]
    assert events[-1]["data"]["device_id"] == device["id"]
    assert events[-1]["data"]["code_id"] == code["id"]


async def test_expired_enrollment_code_is_gone(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    code_hash = secrets.token_hex(32)
    await store.create_enrollment_code(user["org_id"], user["id"], code_hash, [], ttl_s=600)
    clock.advance(600)
    with pytest.raises(Gone, match="expired"):
        await store.enroll_device(code_hash, "late", "linux", secrets.token_hex(16))
    assert await store.list_devices(user["org_id"], 10, None) == []
    assert (await kinds(store, user["org_id"]))[-1] == "enrollment_code.created"


async def test_concurrent_enrollments_spend_a_code_once(store: Store) -> None:
    user = await new_org(store)
    code_hash = secrets.token_hex(32)
    await store.create_enrollment_code(user["org_id"], user["id"], code_hash, [], ttl_s=600)
    results = await asyncio.gather(
        *(store.enroll_device(code_hash, f"box-{i}", "linux", secrets.token_hex(16)) for i in range(4)),
        return_exceptions=True,
    )
    devices = [r for r in results if isinstance(r, dict)]
    assert len(devices) == 1
    assert all(isinstance(r, Gone) for r in results if not isinstance(r, dict)), results
    assert [d["id"] for d in await store.list_devices(user["org_id"], 10, None)] == [devices[0]["id"]]
    assert (await kinds(store, user["org_id"])).count("device.enrolled") == 1


async def test_two_relays_race_for_one_enrollment_code(database_url: str, clock: FakeClock) -> None:
    one, two = await open_store(database_url, clock), await open_store(database_url, clock)
    try:
        user = await new_org(one)
        code_hash = secrets.token_hex(32)
        await one.create_enrollment_code(user["org_id"], user["id"], code_hash, [], ttl_s=600)
        results = await asyncio.gather(
            one.enroll_device(code_hash, "a", "linux", secrets.token_hex(16)),
            two.enroll_device(code_hash, "b", "linux", secrets.token_hex(16)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["Gone", "dict"], results
        assert len(await one.list_devices(user["org_id"], 10, None)) == 1
    finally:
        await one.close()
        await two.close()


async def test_duplicate_public_key_is_a_conflict_and_leaves_the_code_unspent(store: Store) -> None:
    user = await new_org(store)
    existing = await new_device(store, user["org_id"])
    code_hash = secrets.token_hex(32)
    await store.create_enrollment_code(user["org_id"], user["id"], code_hash, [], ttl_s=600)
    with pytest.raises(Conflict):
        await store.enroll_device(code_hash, "clone", "linux", existing["public_key"])
    device = await store.enroll_device(code_hash, "fresh", "linux", secrets.token_hex(16))
    assert device["name"] == "fresh"


async def test_devices_are_scoped_to_their_org(store: Store) -> None:
    alice, bob = await new_org(store, "a"), await new_org(store, "b")
    device = await new_device(store, alice["org_id"])
    assert await store.device(alice["org_id"], device["id"]) == device
    assert await store.device(bob["org_id"], device["id"]) is None
    assert await store.list_devices(bob["org_id"], 10, None) == []
    assert await store.device_public_keys(bob["org_id"]) == {}
    assert await store.device_public_keys(alice["org_id"]) == {device["id"]: device["public_key"]}
    with pytest.raises(NotFound):
        await store.revoke_device(bob["org_id"], device["id"], bob["id"])
    assert (await store.device(alice["org_id"], device["id"]) or {})["status"] == "active"
    revoked = await store.revoke_device(alice["org_id"], device["id"], alice["id"])
    assert (revoked["status"], revoked["revoked_at"]) == ("revoked", store.now())
    assert (await kinds(store, alice["org_id"]))[-1] == "device.revoked"
    assert "device.revoked" not in await kinds(store, bob["org_id"])


async def test_list_devices_pages_by_id(store: Store) -> None:
    user = await new_org(store)
    made = sorted([(await new_device(store, user["org_id"]))["id"] for _ in range(3)])
    first = await store.list_devices(user["org_id"], 2, None)
    rest = await store.list_devices(user["org_id"], 2, first[-1]["id"])
    assert [d["id"] for d in first + rest] == made


async def test_device_nonce_replay_is_refused(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    other = await new_device(store, user["org_id"])
    assert await store.spend_device_nonce(device["id"], "n-1", keep_s=300) is True
    assert await store.spend_device_nonce(device["id"], "n-1", keep_s=300) is False
    assert await store.spend_device_nonce(other["id"], "n-1", keep_s=300) is True
    assert await store.spend_device_nonce(device["id"], "n-2", keep_s=300) is True
    clock.advance(301)
    # Long past the skew window the nonce is forgotten (the timestamp check refuses it now).
    assert await store.spend_device_nonce(device["id"], "n-1", keep_s=300) is True
    nonces = schema.device_nonces
    assert await count(store, nonces, nonces.c.device_id == device["id"]) == 1


async def test_a_replayed_nonce_in_a_busy_group_fails_alone(store: Store) -> None:
    """Concurrent writes share a commit: the replay's failure must not undo the others."""
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    spent = await asyncio.gather(
        *(store.spend_device_nonce(device["id"], "same", keep_s=300) for _ in range(4)),
        *(store.spend_device_nonce(device["id"], f"n-{i}", keep_s=300) for i in range(4)),
    )
    assert sorted(spent[:4]) == [False, False, False, True]
    assert spent[4:] == [True] * 4
    nonces = schema.device_nonces
    assert await count(store, nonces, nonces.c.device_id == device["id"]) == 5


async def test_presence_and_touch(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    clock.advance(5)
    await store.touch_devices({device["id"]: (store.now(), {"cpu_percent": 3.5})})
    seen = await store.device(user["org_id"], device["id"])
    assert seen is not None
    assert (seen["last_seen"], seen["telemetry"]) == (store.now(), {"cpu_percent": 3.5})
    await store.record_presence(device, online=True)
    await store.record_presence(device, online=False, reason="socket closed")
    events = await relay_chain(store, user["org_id"])
    assert [(e["kind"], e["data"]) for e in events[-2:]] == [
        ("device.online", {"device_id": device["id"]}),
        ("device.offline", {"device_id": device["id"], "reason": "socket closed"}),
    ]


async def test_heartbeats_of_many_devices_in_one_write(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    one = await new_device(store, user["org_id"])
    two = await new_device(store, user["org_id"])
    clock.advance(5)
    at = store.now()
    await store.touch_devices({one["id"]: (at, {"load_1m": 0.5}), two["id"]: (at, None)})
    first = await store.device(user["org_id"], one["id"])
    second = await store.device(user["org_id"], two["id"])
    assert first is not None
    assert second is not None
    assert (first["last_seen"], first["telemetry"]) == (at, {"load_1m": 0.5})
    assert (second["last_seen"], second["telemetry"]) == (at, None)


async def test_heartbeats_of_more_devices_than_a_slice_are_all_recorded(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    devices = [await new_device(store, user["org_id"]) for _ in range(TOUCH_SLICE + 3)]
    clock.advance(5)
    at = store.now()
    await store.touch_devices({d["id"]: (at, {"n": i} if i % 2 else None) for i, d in enumerate(devices)})
    for i, d in enumerate(devices):
        row = await store.device(user["org_id"], d["id"])
        assert row is not None
        assert (row["last_seen"], row["telemetry"]) == (at, {"n": i} if i % 2 else None)


async def test_watch_queries_find_revocations_and_new_tasks(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    kept = await new_device(store, user["org_id"])
    revoked = await new_device(store, user["org_id"])
    clock.advance(10)
    since = store.now()
    assert await store.revoked_since(since) == []
    await store.revoke_device(user["org_id"], revoked["id"], user["id"])
    assert await store.revoked_since(since) == [revoked["id"]]
    clock.advance(10)
    assert await store.revoked_since(store.now()) == []
    since = store.now()
    await store.create_task(
        org_id=user["org_id"], device_id=kept["id"], action="file.stat", params={"path": "/"},
        risk={"level": "low"}, status="queued", created_by=user["id"], timeout_s=5, expires_at=store.later(60),
    )
    assert await store.devices_with_new_tasks(since) == [kept["id"]]
    clock.advance(10)
    assert await store.devices_with_new_tasks(store.now()) == []


# -- tasks -----------------------------------------------------------------------------


async def test_create_and_list_tasks_newest_first_with_cursor(store: Store) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    created = []
    for i in range(5):
        created.append(await new_task(store, user["org_id"], device["id"], params={"i": i}))
        await asyncio.sleep(0.002)  # ids order by creation at millisecond resolution
    stored = await store.task(user["org_id"], created[0]["id"])
    assert stored is not None
    assert stored == {**created[0], **{k: None for k in stored if k not in created[0]}}
    assert stored["params"] == {"i": 0}
    assert stored["risk"] == {"level": "low", "score": 1}

    newest_first = [t["id"] for t in reversed(created)]
    pages, cursor = [], None
    while True:
        page = await store.list_tasks(user["org_id"], device_id=None, status=None, limit=2, cursor=cursor)
        if not page:
            break
        pages.append([t["id"] for t in page])
        cursor = page[-1]["id"]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    assert sorted(t for p in pages for t in p) == sorted(newest_first)  # disjoint, complete


async def test_list_tasks_filters_by_status_and_device(store: Store) -> None:
    user = await new_org(store)
    d1, d2 = await new_device(store, user["org_id"]), await new_device(store, user["org_id"])
    a = await new_task(store, user["org_id"], d1["id"])
    b = await new_task(store, user["org_id"], d1["id"])
    c = await new_task(store, user["org_id"], d2["id"])
    await store.cancel_task(user["org_id"], b["id"], user["id"])

    async def ids(**filters: Any) -> set[str]:
        query = {"device_id": None, "status": None, **filters}
        return {t["id"] for t in await store.list_tasks(user["org_id"], limit=50, cursor=None, **query)}

    assert await ids(status="cancelled") == {b["id"]}
    assert await ids(status="queued") == {a["id"], c["id"]}
    assert await ids(device_id=d2["id"]) == {c["id"]}
    assert await ids(device_id=d1["id"], status="queued") == {a["id"]}
    assert await store.task_counts(user["org_id"]) == {"queued": 2, "cancelled": 1}


async def test_tasks_are_scoped_to_their_org(store: Store) -> None:
    alice, bob = await new_org(store, "a"), await new_org(store, "b")
    device = await new_device(store, alice["org_id"])
    task = await new_task(store, alice["org_id"], device["id"])
    assert await store.task(bob["org_id"], task["id"]) is None
    assert await store.list_tasks(bob["org_id"], device_id=None, status=None, limit=10, cursor=None) == []
    assert await store.task_counts(bob["org_id"]) == {}
    with pytest.raises(NotFound):
        await store.cancel_task(bob["org_id"], task["id"], bob["id"])
    assert (await store.task(alice["org_id"], task["id"]) or {})["status"] == "queued"


async def test_deliverable_tasks(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device, other = await new_device(store, user["org_id"]), await new_device(store, user["org_id"])
    queued = await new_task(store, user["org_id"], device["id"])
    dispatched = await new_task(store, user["org_id"], device["id"])
    running = await new_task(store, user["org_id"], device["id"])
    short = await new_task(store, user["org_id"], device["id"], expires_at=store.later(10))
    await new_task(store, user["org_id"], other["id"])
    awaiting = await new_task(store, user["org_id"], device["id"], status="awaiting_approval")
    assert await store.mark_dispatched(device["id"], dispatched["id"])
    assert await store.mark_running(device["id"], running["id"])

    def ids(rows: list[Row]) -> list[str]:
        return [r["id"] for r in rows]

    expected = sorted([queued["id"], dispatched["id"], short["id"]])
    assert ids(await store.deliverable_tasks(device["id"])) == expected
    assert ids(await store.deliverable_tasks(device["id"], limit=2)) == expected[:2]
    assert ids(await store.deliverable_tasks(device["id"], redeliver=False)) == sorted([queued["id"], short["id"]])
    clock.advance(10)
    assert ids(await store.deliverable_tasks(device["id"])) == sorted([queued["id"], dispatched["id"]])
    assert awaiting["id"] not in ids(await store.deliverable_tasks(device["id"]))


@pytest.mark.parametrize("value", [
    {"text": "é\u2028\x00\"\\", "n": [1, 2.5, 1e20, -0.0, None, True]},
    {"big": 2**70, "small": -(2**63)},  # beyond orjson's 64 bits: the standard library writes it
])
async def test_json_columns_keep_their_values(store: Store, value: dict[str, Any]) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    task = await new_task(store, user["org_id"], device["id"], params=value)
    stored = await store.task(user["org_id"], task["id"])
    assert stored is not None
    assert stored["params"] == value
    assert all(type(a) is type(b) for a, b in zip(stored["params"].values(), value.values(), strict=True))


async def test_task_lifecycle_transitions_are_audited(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    task = await new_task(store, user["org_id"], device["id"], timeout_s=20.0)

    clock.advance(1)
    assert await store.mark_dispatched(device["id"], task["id"]) is True
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["attempts"], row["dispatched_at"]) == ("dispatched", 1, store.now())
    assert await store.mark_dispatched(device["id"], task["id"]) is True  # a redelivery
    assert (await store.task(user["org_id"], task["id"]) or {})["attempts"] == 2

    clock.advance(1)
    assert await store.mark_running(device["id"], task["id"]) is True
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["started_at"], row["deadline_at"]) == ("running", store.now(), store.later(50))
    assert await store.mark_dispatched(device["id"], task["id"]) is False

    clock.advance(1)
    result = {"ok": True, "output": {"bytes": 2}, "finished_at": store.now()}
    assert await store.store_result(device["id"], task["id"], "succeeded", result) == "stored"
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["result"], row["finished_at"]) == ("succeeded", result, store.now())
    assert await store.store_result(device["id"], task["id"], "failed", {"ok": False}) == "duplicate"
    assert (await store.task(user["org_id"], task["id"]) or {})["status"] == "succeeded"
    assert await store.mark_running(device["id"], task["id"]) is False

    events = [e for e in await relay_chain(store, user["org_id"]) if e["task_id"] == task["id"]]
    assert [(e["kind"], e["data"].get("from"), e["data"].get("to")) for e in events] == [
        ("task.created", None, None),
        ("task.state", "queued", "dispatched"),
        ("task.state", "dispatched", "running"),
        ("task.state", "running", "succeeded"),
    ]
    assert events[-1]["data"]["ok"] is True


async def test_a_task_for_a_connected_device_is_stored_as_dispatched_in_one_write(store: Store) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    task = await new_task(store, user["org_id"], device["id"], status="dispatched")
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["attempts"], row["dispatched_at"]) == ("dispatched", 1, row["created_at"])
    events = [e for e in await relay_chain(store, user["org_id"]) if e["task_id"] == task["id"]]
    assert [(e["kind"], e["data"]["status"]) for e in events] == [("task.created", "dispatched")]
    # Redelivered to the device's next session like any task sent and not yet reported.
    assert [t["id"] for t in await store.deliverable_tasks(device["id"], redeliver=True)] == [task["id"]]
    assert await store.deliverable_tasks(device["id"], redeliver=False) == []


async def test_a_task_needs_an_active_device_of_the_org_and_leaves_nothing_otherwise(store: Store) -> None:
    user, other = await new_org(store), await new_org(store, "other")
    device, foreign = await new_device(store, user["org_id"]), await new_device(store, other["org_id"])
    before = await count(store, schema.tasks), await kinds(store, user["org_id"])
    with pytest.raises(NotFound):
        await new_task(store, user["org_id"], foreign["id"])
    with pytest.raises(NotFound):
        await new_task(store, user["org_id"], "dev_nope")
    assert (await count(store, schema.tasks), await kinds(store, user["org_id"])) == before
    await store.revoke_device(user["org_id"], device["id"], user["id"])
    before = await count(store, schema.tasks), await kinds(store, user["org_id"])
    with pytest.raises(Conflict, match="revoked"):
        await new_task(store, user["org_id"], device["id"])
    assert (await count(store, schema.tasks), await kinds(store, user["org_id"])) == before


async def test_receipts_are_written_in_one_write_or_folded_into_the_result(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device, other = await new_device(store, user["org_id"]), await new_device(store, user["org_id"])
    slow = await new_task(store, user["org_id"], device["id"], status="dispatched")
    fast = await new_task(store, user["org_id"], device["id"], status="dispatched")
    received_at = store.now()
    clock.advance(1)
    moved = await store.mark_running_many([
        (device["id"], slow["id"], received_at), (other["id"], fast["id"], received_at),  # not other's task
    ])
    assert moved == [(device["id"], slow["id"])]
    row = await store.task(user["org_id"], slow["id"])
    assert (row or {})["started_at"] == received_at

    clock.advance(1)
    result = {"ok": True, "finished_at": store.now()}
    assert await store.store_result(device["id"], fast["id"], "succeeded", result, received_at=received_at) == "stored"
    row = await store.task(user["org_id"], fast["id"])
    assert row is not None
    assert (row["status"], row["started_at"]) == ("succeeded", received_at)
    events = [e for e in await relay_chain(store, user["org_id"]) if e["task_id"] == fast["id"]]
    assert [(e["data"].get("from"), e["data"].get("to")) for e in events] == [(None, None), ("dispatched", "succeeded")]


async def test_result_from_another_device_is_unknown_and_changes_nothing(store: Store) -> None:
    user = await new_org(store)
    device, intruder = await new_device(store, user["org_id"]), await new_device(store, user["org_id"])
    task = await new_task(store, user["org_id"], device["id"])
    before_events = await kinds(store, user["org_id"])
    assert await store.mark_dispatched(intruder["id"], task["id"]) is False
    assert await store.mark_running(intruder["id"], task["id"]) is False
    assert await store.store_result(intruder["id"], task["id"], "succeeded", {"ok": True}) == "unknown"
    assert await store.store_result(device["id"], "tsk_nope", "succeeded", {"ok": True}) == "unknown"
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["result"], row["finished_at"]) == ("queued", None, None)
    assert await kinds(store, user["org_id"]) == before_events


async def test_cancel(store: Store) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    task = await new_task(store, user["org_id"], device["id"])
    cancelled = await store.cancel_task(user["org_id"], task["id"], user["id"])
    assert (cancelled["status"], cancelled["finished_at"]) == ("cancelled", store.now())
    with pytest.raises(Conflict, match="already cancelled"):
        await store.cancel_task(user["org_id"], task["id"], user["id"])
    # A late result is kept for the record but does not resurrect the task.
    assert await store.store_result(device["id"], task["id"], "succeeded", {"ok": True}) == "stored"
    row = await store.task(user["org_id"], task["id"])
    assert row is not None
    assert (row["status"], row["result"]) == ("cancelled", {"ok": True})

    done = await new_task(store, user["org_id"], device["id"])
    assert await store.store_result(device["id"], done["id"], "failed", {"ok": False, "error": "boom"}) == "stored"
    with pytest.raises(Conflict, match="already failed"):
        await store.cancel_task(user["org_id"], done["id"], user["id"])

    events = [e for e in await relay_chain(store, user["org_id"]) if e["kind"] == "task.state"]
    assert [(e["task_id"], e["data"]["to"]) for e in events] == [
        (task["id"], "cancelled"), (done["id"], "failed")
    ]
    assert events[0]["data"]["by"] == user["id"]
    assert events[1]["data"]["error"] == "boom"


async def test_sweep_expires_queued_and_times_out_running(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    queued = await new_task(store, user["org_id"], device["id"], expires_at=store.later(60))
    running = await new_task(store, user["org_id"], device["id"], timeout_s=10.0, expires_at=store.later(5))
    lasting = await new_task(store, user["org_id"], device["id"], expires_at=store.later(3600))
    assert await store.mark_running(device["id"], running["id"])  # deadline: 10 + 30 s grace

    def mine(changed: list[Row]) -> list[tuple[str, str]]:
        return sorted((c["id"], c["status"]) for c in changed if c["org_id"] == user["org_id"])

    assert mine(await store.sweep_tasks()) == []
    clock.advance(39)
    assert mine(await store.sweep_tasks()) == []  # running outlives its expires_at
    clock.advance(1)
    assert mine(await store.sweep_tasks()) == [(running["id"], "timed_out")]
    clock.advance(20)
    assert mine(await store.sweep_tasks()) == [(queued["id"], "expired")]
    assert mine(await store.sweep_tasks()) == []

    statuses = {
        t["id"]: t["status"]
        for t in await store.list_tasks(user["org_id"], device_id=None, status=None, limit=10, cursor=None)
    }
    assert statuses == {queued["id"]: "expired", running["id"]: "timed_out", lasting["id"]: "queued"}
    assert (await store.task(user["org_id"], queued["id"]) or {})["finished_at"] == store.now()
    # A result arriving after the timeout is kept but the status stays timed_out.
    assert await store.store_result(device["id"], running["id"], "succeeded", {"ok": True}) == "stored"
    assert (await store.task(user["org_id"], running["id"]) or {})["status"] == "timed_out"

    moves = [(e["task_id"], e["data"]["from"], e["data"]["to"])
             for e in await relay_chain(store, user["org_id"]) if e["kind"] == "task.state"]
    assert moves == [
        (running["id"], "queued", "running"),
        (running["id"], "running", "timed_out"),
        (queued["id"], "queued", "expired"),
    ]


# -- audit chain heads -----------------------------------------------------------------


async def test_audit_head_compare_and_set(store: Store) -> None:
    user = await new_org(store)
    chain_id = f"dev_{secrets.token_hex(8)}"
    h1, h2, h3 = (ChainHead(n, secrets.token_hex(32)) for n in (1, 2, 3))
    assert await store.audit_head(chain_id) is None
    assert await store.advance_audit_head(chain_id, user["org_id"], None, h1) is True
    assert await store.advance_audit_head(chain_id, user["org_id"], None, h2) is False
    assert await store.audit_head(chain_id) == h1
    assert await store.advance_audit_head(chain_id, user["org_id"], h1, h2) is True
    assert await store.advance_audit_head(chain_id, user["org_id"], h1, h3) is False  # stale
    assert await store.advance_audit_head(chain_id, user["org_id"], ChainHead(2, "f" * 64), h3) is False
    assert await store.audit_head(chain_id) == h2
    racers = [ChainHead(3, secrets.token_hex(32)) for _ in range(4)]
    won = await asyncio.gather(*(store.advance_audit_head(chain_id, user["org_id"], h2, r) for r in racers))
    assert won.count(True) == 1
    assert await store.audit_head(chain_id) == racers[won.index(True)]


# -- the relay's own audit chain -------------------------------------------------------


async def test_relay_chain_is_gap_free_under_concurrent_writes(store: Store) -> None:
    user = await new_org(store)
    device = await new_device(store, user["org_id"])
    other = await new_org(store, "other")
    tasks = await asyncio.gather(
        *(new_task(store, user["org_id"], device["id"], params={"i": i}) for i in range(50)),
        *(store.record_event(other["org_id"], "test.noise", {"i": i}) for i in range(10)),
    )
    events = await relay_chain(store, user["org_id"])
    assert [e["seq"] for e in events] == list(range(1, 54))
    created = [e for e in events if e["kind"] == "task.created"]
    assert sorted(e["task_id"] for e in created) == sorted(t["id"] for t in tasks if t)
    assert {e["device_id"] for e in events} == {store.relay_chain_id(user["org_id"])}
    assert [e["kind"] for e in await relay_chain(store, other["org_id"])] == ["user.signup"] + ["test.noise"] * 10


async def test_events_of_a_failed_write_leave_no_gap_in_the_group_they_shared(store: Store) -> None:
    # Events wait in memory until their group commits; a write that fails after
    # recording one must take it back, or the chain would hold an event of a change
    # that never happened (and its successors would not link).
    user = await new_org(store)

    def doomed(conn: Any) -> None:
        store._record_event(conn, user["org_id"], "test.doomed", {})
        raise RuntimeError("this write fails after its event")

    outcomes = await asyncio.gather(
        *(store.record_event(user["org_id"], "test.kept", {"i": i}) for i in range(20)),
        *(store._write(doomed) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, RuntimeError) for o in outcomes) == 5
    events = await relay_chain(store, user["org_id"])
    assert [e["kind"] for e in events] == ["user.signup"] + ["test.kept"] * 20
    verify_chain(events, device_id=store.relay_chain_id(user["org_id"]))


async def test_drop_relay_events_keeps_the_rest_of_the_chain(store: Store) -> None:
    user = await new_org(store)
    for i in range(4):
        await store.record_event(user["org_id"], "test.event", {"i": i})
    chain_id = store.relay_chain_id(user["org_id"])
    events = await relay_chain(store, user["org_id"])
    assert len(events) == 5
    await store.drop_relay_events(chain_id, 3)
    rest = [r["record"] for r in await store.pending_relay_events(100_000) if r["chain_id"] == chain_id]
    assert [r["seq"] for r in rest] == [4, 5]
    verify_chain(rest, start=ChainHead(3, events[2]["hash"]), device_id=chain_id)
    # The chain continues from its head, not from what is left in the outbox.
    await store.drop_relay_events(chain_id, 5)
    await store.record_event(user["org_id"], "test.event", {"i": 4})
    rest = [r["record"] for r in await store.pending_relay_events(100_000) if r["chain_id"] == chain_id]
    assert [r["seq"] for r in rest] == [6]
    verify_chain(rest, start=ChainHead(5, events[4]["hash"]), device_id=chain_id)


async def test_pending_relay_events_are_this_relays_only(database_url: str, clock: FakeClock) -> None:
    one, two = await open_store(database_url, clock), await open_store(database_url, clock)
    try:
        user = await new_org(one)
        await two.record_event(user["org_id"], "test.other_relay", {})
        mine = {r["chain_id"] for r in await one.pending_relay_events(100_000)}
        theirs = {r["chain_id"] for r in await two.pending_relay_events(100_000)}
        assert one.relay_chain_id(user["org_id"]) in mine
        assert two.relay_chain_id(user["org_id"]) in theirs
        assert not mine & theirs
        assert await one.relay_chain_keys(user["org_id"]) == {
            one.relay_chain_id(user["org_id"]): one.relay_audit_key,
            two.relay_chain_id(user["org_id"]): two.relay_audit_key,
        }
        limited = await one.pending_relay_events(1)
        assert len(limited) == 1
    finally:
        await one.close()
        await two.close()


# -- users, roles, passwords, refresh grace (issue 3) ----------------------------------


async def test_migration_2_adds_used_from_to_a_version_1_database(database_url: str, clock: FakeClock) -> None:
    # A database made by the first release lacks refresh_tokens.used_from.
    opened = await open_store(database_url, clock)
    try:
        with opened.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE refresh_tokens DROP COLUMN used_from")
            conn.execute(schema.schema_migrations.delete().where(schema.schema_migrations.c.version >= 2))
        assert 2 in await asyncio.to_thread(migrate, opened.engine)
        user = await new_org(opened)
        token = secrets.token_hex(32)
        await opened.issue_refresh_token(user, token, ttl_s=3600)
        assert (await opened.consume_refresh_token(token, "10.0.0.1", grace_s=10))[0] == "ok"
        t = schema.refresh_tokens
        assert await count(opened, t, t.c.token_hash == token, t.c.used_from == "10.0.0.1") == 1
    finally:
        await opened.close()


async def test_create_user_in_an_org_and_list_users_pages(store: Store) -> None:
    admin = await new_org(store)
    other = await new_org(store, "other")
    made = [
        await store.create_user(admin["org_id"], f"u{i}-{secrets.token_hex(4)}@example.com", "hash", "viewer", admin["id"])
        for i in range(3)
    ]
    assert {u["role"] for u in made} == {"viewer"}
    assert all(u["org_id"] == admin["org_id"] and not u["disabled"] for u in made)
    first = await store.list_users(admin["org_id"], 2, None)
    rest = await store.list_users(admin["org_id"], 10, first[-1]["id"])
    assert [u["id"] for u in first + rest] == [admin["id"], *(u["id"] for u in made)]
    assert other["id"] not in {u["id"] for u in first + rest}
    with pytest.raises(Conflict):
        await store.create_user(admin["org_id"], made[0]["email"], "hash", "viewer", admin["id"])
    events = await relay_chain(store, admin["org_id"])
    created = [e for e in events if e["kind"] == "user.created"]
    assert [e["data"] for e in created] == [{"user_id": u["id"], "role": "viewer", "by": admin["id"]} for u in made]


async def test_update_user_role_and_disable_revokes_sessions(store: Store) -> None:
    admin = await new_org(store)
    user = await store.create_user(admin["org_id"], f"op-{secrets.token_hex(4)}@example.com", "hash", "viewer", admin["id"])
    tokens = [secrets.token_hex(32) for _ in range(2)]
    for token in tokens:  # two sessions, two families
        await store.issue_refresh_token(user, token, ttl_s=3600)
    assert await store.live_refresh_families(user["id"]) == 2

    changed = await store.update_user(admin["org_id"], user["id"], admin["id"], role="operator")
    assert (changed["role"], changed["disabled"]) == ("operator", False)
    assert await store.live_refresh_families(user["id"]) == 2  # a role change keeps sessions

    changed = await store.update_user(admin["org_id"], user["id"], admin["id"], disabled=True)
    assert changed["disabled"] is True
    assert await store.live_refresh_families(user["id"]) == 0
    assert await store.consume_refresh_token(tokens[0]) == ("invalid", None)
    changed = await store.update_user(admin["org_id"], user["id"], admin["id"], disabled=False)
    assert changed["disabled"] is False
    events = [e for e in await relay_chain(store, admin["org_id"]) if e["kind"].startswith("user.")]
    assert [(e["kind"], e["data"]) for e in events[-3:]] == [
        ("user.role_changed", {"user_id": user["id"], "by": admin["id"], "from": "viewer", "to": "operator"}),
        ("user.disabled", {"user_id": user["id"], "by": admin["id"], "sessions_revoked": 2}),
        ("user.enabled", {"user_id": user["id"], "by": admin["id"]}),
    ]


async def test_user_reads_see_this_processs_changes_at_once_and_others_within_the_cache_time(
    store: Store, clock: FakeClock
) -> None:
    admin = await new_org(store)
    org = admin["org_id"]
    user = await store.create_user(org, f"u-{secrets.token_hex(4)}@example.com", "hash", "viewer", admin["id"])
    assert (await store.user_by_id(org, user["id"]) or {})["disabled"] is False
    await store.update_user(org, user["id"], admin["id"], disabled=True)
    assert (await store.user_by_id(org, user["id"]) or {})["disabled"] is True  # at once: changed here

    def changed_by_another_relay() -> None:
        with store.engine.begin() as conn:
            conn.execute(update(schema.users).where(schema.users.c.id == user["id"]).values(role="operator"))

    await asyncio.to_thread(changed_by_another_relay)
    assert (await store.user_by_id(org, user["id"]) or {})["role"] == "viewer"  # still the cached row
    clock.advance(USER_CACHE_S + 0.01)
    assert (await store.user_by_id(org, user["id"]) or {})["role"] == "operator"
    assert await store.user_by_id("org_other", user["id"]) is None  # the cache keeps orgs apart


async def test_the_last_enabled_admin_cannot_be_removed(store: Store) -> None:
    admin = await new_org(store)
    org = admin["org_id"]
    for change in ({"role": "viewer"}, {"disabled": True}):
        with pytest.raises(Conflict):
            await store.update_user(org, admin["id"], admin["id"], **change)  # type: ignore[arg-type]
    assert (await store.user_by_id(org, admin["id"]))["role"] == "admin"  # type: ignore[index]
    second = await store.create_user(org, f"a2-{secrets.token_hex(4)}@example.com", "hash", "admin", admin["id"])
    await store.update_user(org, admin["id"], admin["id"], role="viewer")  # another admin remains
    with pytest.raises(Conflict):
        await store.update_user(org, second["id"], second["id"], disabled=True)
    # A disabled admin does not count as the one that remains.
    await store.update_user(org, second["id"], second["id"], role="admin")  # no-op
    with pytest.raises(NotFound):
        await store.update_user(org, "usr_00000000000000000000000000", admin["id"], role="viewer")
    other = await new_org(store, "other")
    with pytest.raises(NotFound):  # another org's user is absent
        await store.update_user(other["org_id"], second["id"], other["id"], role="viewer")


async def test_change_password_revokes_every_family(store: Store) -> None:
    user = await new_org(store)
    token = secrets.token_hex(32)
    await store.issue_refresh_token(user, token, ttl_s=3600)
    await store.change_password(user["org_id"], user["id"], "new-hash")
    row = await store.user_by_id(user["org_id"], user["id"])
    assert row is not None
    assert row["password_hash"] == "new-hash"
    assert await store.consume_refresh_token(token) == ("invalid", None)
    assert (await kinds(store, user["org_id"]))[-1] == "user.password_changed"
    with pytest.raises(NotFound):
        await store.change_password("org_00000000000000000000000000", user["id"], "x")


async def test_org_stats_counts_one_org(store: Store) -> None:
    admin = await new_org(store)
    other = await new_org(store, "other")
    user = await store.create_user(admin["org_id"], f"v-{secrets.token_hex(4)}@example.com", "hash", "viewer", admin["id"])
    await store.update_user(admin["org_id"], user["id"], admin["id"], disabled=True)
    device = await new_device(store, admin["org_id"], admin["id"])
    await new_device(store, other["org_id"], other["id"])
    await new_task(store, admin["org_id"], device["id"])
    stats = await store.org_stats(admin["org_id"])
    assert stats == {
        "users": {"total": 2, "disabled": 1, "enabled_by_role": {"admin": 1}},
        "devices": {"total": 1, "by_status": {"active": 1}},
        "tasks": {"total": 1, "by_status": {"queued": 1}},
    }


async def test_refresh_reuse_grace_forgives_a_prompt_retry_from_the_same_client(store: Store, clock: FakeClock) -> None:
    user = await new_org(store)
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    family = await store.issue_refresh_token(user, first, ttl_s=3600)
    assert (await store.consume_refresh_token(first, "10.0.0.1", grace_s=10))[0] == "ok"
    await store.issue_refresh_token(user, second, ttl_s=3600, family_id=family)
    clock.advance(5)
    outcome, row = await store.consume_refresh_token(first, "10.0.0.1", grace_s=10)
    assert outcome == "rotated"
    assert row is not None
    assert row["family_id"] == family
    assert await store.live_refresh_families(user["id"]) == 1  # the family lives on
    assert (await kinds(store, user["org_id"]))[-1] == "auth.refresh_retry"
    clock.advance(1)
    assert (await store.consume_refresh_token(second, "10.0.0.1", grace_s=10))[0] == "ok"


@pytest.mark.parametrize(
    ("client", "wait_s", "spend_successor"),
    [
        pytest.param("10.0.0.2", 1, False, id="another-client"),
        pytest.param("10.0.0.1", 11, False, id="after-the-grace"),
        pytest.param("10.0.0.1", 1, True, id="not-the-latest-token"),
        pytest.param(None, 1, False, id="unknown-client"),
    ],
)
async def test_refresh_reuse_outside_the_grace_revokes_the_family(
    store: Store, clock: FakeClock, client: str | None, wait_s: float, spend_successor: bool
) -> None:
    user = await new_org(store)
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    family = await store.issue_refresh_token(user, first, ttl_s=3600)
    assert (await store.consume_refresh_token(first, "10.0.0.1", grace_s=10))[0] == "ok"
    await store.issue_refresh_token(user, second, ttl_s=3600, family_id=family)
    clock.advance(wait_s)
    if spend_successor:
        assert (await store.consume_refresh_token(second, "10.0.0.1", grace_s=10))[0] == "ok"
        clock.advance(0.5)
    assert (await store.consume_refresh_token(first, client, grace_s=10))[0] == "reused"
    assert await store.live_refresh_families(user["id"]) == 0
    assert (await kinds(store, user["org_id"]))[-1] == "auth.refresh_reuse"
