"""The relay's state store: one code path over SQLite and PostgreSQL (SQLAlchemy Core).

Every method that reads tenant data takes the caller's ``org_id`` and filters by it.
Every method that changes security-relevant state also appends the relay's own audit
event in the *same transaction* (``_record_event``), so state and audit can never
disagree; the events are forwarded to ClickHouse later by ``coact.relay.audit``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from coact.relay import queries as q
from coact.relay import schema as s
from coact.relay.errors import Conflict, EmailTaken, Gone, NotFound
from coact.relay.groupcommit import GroupCommit, prepare_sqlite_writer
from coact.relay.ids import new_id
from coact.relay.prepared import column_json
from coact.shared.chain import GENESIS, ChainHead, make_record
from coact.shared.clock import Clock, from_rfc3339, to_rfc3339

Row = dict[str, Any]
T = TypeVar("T")

# Every user request reads its user (a disabled account or a changed role must count
# before the token expires). The rows are kept this long per process: a change made
# through this process drops them at once, one made through another relay process
# counts here within this time.
USER_CACHE_S = 1.0
USER_CACHE_MAX = 10_000
# Heartbeat rows recorded per write (see touch_devices).
TOUCH_SLICE = 200

ACTIVE_TASK_STATUSES = ("queued", "dispatched", "running")
FINAL_TASK_STATUSES = ("rejected", "succeeded", "failed", "timed_out", "cancelled", "expired")


def sync_url(url: str) -> str:
    """The URL for SQLAlchemy's synchronous drivers: ``postgresql://`` and the async
    spellings (``postgresql+asyncpg://``, ``sqlite+aiosqlite://``) are accepted too."""
    for prefix, driver in (("postgresql+asyncpg://", "postgresql+psycopg://"),
                           ("postgresql://", "postgresql+psycopg://"),
                           ("postgres://", "postgresql+psycopg://"),
                           ("sqlite+aiosqlite://", "sqlite://")):
        if url.startswith(prefix):
            return driver + url.removeprefix(prefix)
    return url


SQLITE_BUSY_TIMEOUT_MS = 10_000


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL`` (it stays with the file once set).

    While another connection makes the same switch, SQLite answers "database is
    locked" at once instead of waiting for ``busy_timeout`` (seen with relays, or a
    relay and a CLI command, opening a new database together), so this waits for
    the lock itself, as long as ``busy_timeout`` would.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_engine(url: str, pool_size: int = 8) -> Engine:
    url = sync_url(url)
    codec: dict[str, Any] = {"json_serializer": column_json}
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=pool_size, max_overflow=0,
                               connect_args={"check_same_thread": False}, **codec)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # First: switching a new file to WAL takes a lock, and relays (or a relay and
            # a CLI command) opening it at once must wait for it, not fail.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)  # readers never block the writer
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=8, pool_pre_ping=True, **codec)


def _touch(rows: list[dict[str, Any]], conn: Connection) -> None:
    """One executemany per column set (a device may have sent no telemetry)."""
    for group in ([r for r in rows if "telemetry" in r], [r for r in rows if "telemetry" not in r]):
        if group:
            q.SET_DEVICE.run_many(conn, group)


def _row(row: Any) -> Row:
    return dict(row._mapping)


PAGE_CUT = "_page_cut"


def task_json_bytes(task: Row) -> int:
    """About how many bytes a task takes as JSON: its params and result, and a fixed
    allowance for the other, short fields."""
    return 512 + len(json.dumps(task.get("params"))) + len(json.dumps(task.get("result")))


def page_was_cut(rows: list[Row]) -> bool:
    """True if :meth:`Store.list_tasks` stopped at its byte budget (its last row is then
    only a marker and not part of the page)."""
    return bool(rows) and bool(rows[-1].get(PAGE_CUT))


class Store:
    """Relay state. Construct with :meth:`open`; close with :meth:`close`.

    The methods are coroutines; each runs its SQL as one plain function in a worker
    thread (reads) or in the group-commit writer (writes), so the event loop hands
    off once per call, not once per statement.
    """

    def __init__(self, engine: Engine, writer_engine: Engine, clock: Clock, relay_id: str, relay_audit_key: str) -> None:
        self.engine = engine  # reads
        self._writer_engine = writer_engine
        self.clock = clock
        self.relay_id = relay_id
        self.relay_audit_key = relay_audit_key
        # Every write of this process goes through one group-commit writer: writes are
        # serialised (so this relay's own audit chains stay gap-free on every database)
        # and share commits under load. Chain heads live in memory between commits:
        # only this process writes its chains (relay ids are unique per process). A
        # group's events are inserted together just before its commit: one statement
        # for the group instead of one per state change.
        self._chain_heads: dict[str, ChainHead] = {}
        self._dirty_chains: set[str] = set()
        self._new_chains: dict[str, str] = {}  # chain id -> org id, not yet in relay_chains
        self._new_events: list[dict[str, Any]] = []  # rows for relay_audit_outbox
        self._users: dict[tuple[str, str], tuple[float, Row | None]] = {}
        self._users_generation = 0
        self._writer = GroupCommit(
            writer_engine, before_body=self._snapshot_chains,
            before_commit=self._flush_chains, after_abort=self._forget_chains,
        )

    @classmethod
    async def open(cls, url: str, clock: Clock, relay_id: str, relay_audit_key: str) -> Store:
        """Open and migrate. ``relay_audit_key`` is the public key signing this relay's chains."""
        from coact.relay.migrations import migrate

        engine = open_engine(url)
        await asyncio.to_thread(migrate, engine)
        if engine.dialect.name == "sqlite":
            writer_engine = open_engine(url, pool_size=1)
            prepare_sqlite_writer(writer_engine)
        else:
            writer_engine = engine
        return cls(engine, writer_engine, clock, relay_id, relay_audit_key)

    def relay_chain_id(self, org_id: str) -> str:
        return f"relay:{self.relay_id}:{org_id}"

    async def close(self) -> None:
        await self._writer.close()
        if self._writer_engine is not self.engine:
            await asyncio.to_thread(self._writer_engine.dispose)
        await asyncio.to_thread(self.engine.dispose)

    def now(self) -> str:
        return to_rfc3339(self.clock.now())

    def later(self, seconds: float) -> str:
        return to_rfc3339(self.clock.now() + timedelta(seconds=seconds))

    @staticmethod
    def earlier(moment: str, seconds: float) -> str:
        return to_rfc3339(from_rfc3339(moment) - timedelta(seconds=seconds))

    async def _write(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` as one atomic write; return once committed."""
        return await self._writer.run(body)

    async def _read(self, body: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return body(conn)

        return await asyncio.to_thread(run)

    def _snapshot_chains(self) -> Callable[[], None]:
        """Undo for a body that fails: its savepoint is rolled back, so are its events."""
        heads, dirty, new = dict(self._chain_heads), set(self._dirty_chains), dict(self._new_chains)
        events = len(self._new_events)

        def undo() -> None:
            self._chain_heads, self._dirty_chains, self._new_chains = heads, dirty, new
            del self._new_events[events:]

        return undo

    def _flush_chains(self, conn: Connection) -> None:
        """Write what the group added to the relay's chains, just before its commit."""
        if self._new_events:
            q.INSERT_RELAY_EVENT.run_many(conn, self._new_events)
            self._new_events = []
        chain = s.relay_chains
        for chain_id in sorted(self._dirty_chains):
            head = self._chain_heads[chain_id]
            if chain_id in self._new_chains:
                conn.execute(insert(chain).values(
                    chain_id=chain_id, org_id=self._new_chains[chain_id], seq=head.seq, hash=head.hash,
                    public_key=self.relay_audit_key,
                ))
            else:
                q.SET_RELAY_HEAD.run(conn, {"b_chain": chain_id, "seq": head.seq, "hash": head.hash})
        self._dirty_chains.clear()
        self._new_chains.clear()

    def _forget_chains(self) -> None:
        """After a failed commit: heads are read again from the database."""
        self._chain_heads.clear()
        self._dirty_chains.clear()
        self._new_chains.clear()
        self._new_events.clear()

    async def ping(self) -> None:
        def _body(conn: Connection) -> Any:
            conn.execute(select(1))
        await self._read(_body)

    # -- the relay's own audit chain --------------------------------------------------

    def _record_event(
        self,
        conn: Connection,
        org_id: str,
        kind: str,
        data: Mapping[str, Any],
        task_id: str | None = None,
    ) -> None:
        chain_id = self.relay_chain_id(org_id)
        head = self._chain_heads.get(chain_id)
        if head is None:
            row = q.RELAY_HEAD.first(conn, {"b_chain": chain_id})
            if row is None:
                head = GENESIS
                self._new_chains[chain_id] = org_id
            else:
                head = ChainHead(row.seq, row.hash)
        record = make_record(head, device_id=chain_id, kind=kind, ts=self.now(), data=data, task_id=task_id)
        self._chain_heads[chain_id] = ChainHead(record["seq"], record["hash"])
        self._dirty_chains.add(chain_id)
        self._new_events.append({"chain_id": chain_id, "seq": record["seq"], "org_id": org_id, "record": record})

    async def record_event(
        self, org_id: str, kind: str, data: Mapping[str, Any], task_id: str | None = None
    ) -> None:
        def _body(conn: Connection) -> Any:
            self._record_event(conn, org_id, kind, data, task_id)
        await self._write(_body)

    async def pending_relay_events(self, limit: int) -> list[Row]:
        """This relay's unforwarded events, ordered by chain then seq."""
        t = s.relay_audit_outbox
        def _body(conn: Connection) -> Any:
            rows = conn.execute(
                select(t)
                .where(t.c.chain_id.startswith(f"relay:{self.relay_id}:", autoescape=True))
                .order_by(t.c.chain_id, t.c.seq)
                .limit(limit)
            )
            return [_row(r) for r in rows]
        return await self._read(_body)

    async def drop_relay_events(self, chain_id: str, upto_seq: int) -> None:
        t = s.relay_audit_outbox
        def _body(conn: Connection) -> Any:
            conn.execute(delete(t).where(t.c.chain_id == chain_id, t.c.seq <= upto_seq))
        await self._write(_body)

    async def relay_chain_keys(self, org_id: str) -> dict[str, str]:
        c = s.relay_chains
        def _body(conn: Connection) -> Any:
            rows = conn.execute(select(c.c.chain_id, c.c.public_key).where(c.c.org_id == org_id))
            return {r.chain_id: r.public_key for r in rows}
        return await self._read(_body)

    # -- users, orgs, refresh tokens ----------------------------------------------------

    async def create_org_with_admin(self, email: str, password_hash: str, org_name: str) -> Row:
        now = self.now()
        org_id, user_id = new_id("org"), new_id("usr")
        try:
            def _body(conn: Connection) -> Any:
                conn.execute(insert(s.orgs).values(id=org_id, name=org_name, created_at=now))
                conn.execute(
                    insert(s.users).values(
                        id=user_id, org_id=org_id, email=email, password_hash=password_hash,
                        role="admin", disabled=False, created_at=now, password_changed_at=now,
                    )
                )
                self._record_event(conn, org_id, "user.signup", {"user_id": user_id, "role": "admin"})
            await self._write(_body)
        except IntegrityError as exc:
            raise EmailTaken("an account with this email already exists") from exc
        user = await self.user_by_id(org_id, user_id)
        assert user is not None
        return user

    async def _one(self, query: Any, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row of a read query (with ``params`` for a prebuilt one) as a dict, or None."""
        def _body(conn: Connection) -> Row | None:
            row = (conn.execute(query, params) if params else conn.execute(query)).first()
            return _row(row) if row else None
        return await self._read(_body)

    async def user_by_email(self, email: str) -> Row | None:
        return await self._one(select(s.users).where(s.users.c.email == email))

    async def user_by_id(self, org_id: str, user_id: str) -> Row | None:
        """The org's user, as of at most ``USER_CACHE_S`` ago (at once after a change here)."""
        key, now = (org_id, user_id), self.clock.monotonic()
        cached = self._users.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        generation = self._users_generation
        row = await self._one(q.ORG_USER, {"b_id": user_id, "b_org": org_id})
        if generation == self._users_generation:  # no change here while we read
            if len(self._users) >= USER_CACHE_MAX:
                self._users.clear()
            self._users[key] = (now + USER_CACHE_S, row)
        return row

    def _forget_users(self) -> None:
        self._users.clear()
        self._users_generation += 1

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        def _body(conn: Connection) -> Any:
            conn.execute(
                update(s.users).where(s.users.c.id == user_id).values(password_hash=password_hash)
            )
        await self._write(_body)
        self._forget_users()

    async def issue_refresh_token(
        self, user: Row, token_hash: str, ttl_s: int, family_id: str | None = None
    ) -> str:
        t = s.refresh_tokens
        family = family_id or new_id("fam")
        def _body(conn: Connection) -> Any:
            # Rotation consumes the old token and mints its successor in two transactions;
            # a reuse or logout between them revokes the family, and the successor must
            # not escape that: it is born revoked.
            revoked_at: str | None = None
            expires_at = self.later(ttl_s)
            if family_id is not None:
                revoked = conn.execute(
                    select(t.c.id).where(t.c.family_id == family, t.c.revoked_at.is_not(None)).limit(1)
                )
                if revoked.first() is not None:
                    revoked_at = self.now()
                # A session lives ttl_s from its login, however often it refreshes.
                started = conn.execute(select(func.min(t.c.expires_at)).where(t.c.family_id == family)).scalar()
                if started is not None:
                    expires_at = min(expires_at, started)
            conn.execute(
                insert(t).values(
                    id=new_id("rt"), family_id=family, user_id=user["id"], org_id=user["org_id"],
                    token_hash=token_hash, created_at=self.now(), expires_at=expires_at,
                    revoked_at=revoked_at,
                )
            )
        await self._write(_body)
        return family

    async def consume_refresh_token(
        self, token_hash: str, client: str | None = None, grace_s: float = 0.0
    ) -> tuple[str, Row | None]:
        """Mark a refresh token used by ``client`` (its address). Returns ``(outcome, row)``.

        ``ok``: first use of a live token. ``rotated``: a repeat of the family's most
        recently spent token, from the same client, within ``grace_s`` of its use — a
        retry after a lost answer or two tabs refreshing at once; refused, but the
        family lives on. ``reused``: any other repeat — its whole family is revoked here,
        because either the client or a thief holds a copy. ``invalid``: unknown,
        expired or revoked. The single conditional UPDATE makes two concurrent uses race
        safely: exactly one sees ``ok``.
        """
        t = s.refresh_tokens
        now = self.now()
        def _body(conn: Connection) -> Any:
            row = (conn.execute(select(t).where(t.c.token_hash == token_hash))).first()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return "invalid", None
            claimed = conn.execute(
                update(t).where(t.c.id == row.id, t.c.used_at.is_(None)).values(used_at=now, used_from=client)
            )
            if claimed.rowcount == 1:
                return "ok", _row(row)
            # Read the winner's use (a concurrent one may have committed after our first read).
            row = (conn.execute(select(t).where(t.c.id == row.id))).one()
            if self._within_reuse_grace(conn, row, client, grace_s):
                self._record_event(
                    conn, row.org_id, "auth.refresh_retry",
                    {"user_id": row.user_id, "family_id": row.family_id},
                )
                return "rotated", _row(row)
            conn.execute(
                update(t)
                .where(t.c.family_id == row.family_id, t.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            self._record_event(
                conn, row.org_id, "auth.refresh_reuse",
                {"user_id": row.user_id, "family_id": row.family_id},
            )
            return "reused", _row(row)
        return await self._write(_body)

    def _within_reuse_grace(
        self, conn: Connection, row: Any, client: str | None, grace_s: float
    ) -> bool:
        if grace_s <= 0 or client is None or row.used_from != client or row.used_at is None:
            return False
        if row.used_at < to_rfc3339(self.clock.now() - timedelta(seconds=grace_s)):
            return False
        # Only the immediately previous token: once its successor was spent too, a copy
        # of this one is stale however recent, and its reuse is theft or a bug.
        t = s.refresh_tokens
        later = conn.execute(
            select(t.c.id).where(t.c.family_id == row.family_id, t.c.used_at > row.used_at).limit(1)
        )
        return later.first() is None

    async def revoke_refresh_family(self, token_hash: str, user_id: str) -> bool:
        t = s.refresh_tokens
        def _body(conn: Connection) -> Any:
            row = (
                conn.execute(select(t).where(t.c.token_hash == token_hash, t.c.user_id == user_id))
            ).first()
            if row is None:
                return False
            conn.execute(
                update(t)
                .where(t.c.family_id == row.family_id, t.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
            self._record_event(conn, row.org_id, "auth.logout", {"user_id": user_id})
            return True
        return await self._write(_body)

    # -- admin user management (issue 3: users, roles, passwords) -----------------------

    async def create_user(self, org_id: str, email: str, password_hash: str, role: str, by: str) -> Row:
        """Add a user to an existing org (an admin's invitation)."""
        now = self.now()
        user_id = new_id("usr")
        try:
            def _body(conn: Connection) -> Any:
                conn.execute(
                    insert(s.users).values(
                        id=user_id, org_id=org_id, email=email, password_hash=password_hash,
                        role=role, disabled=False, created_at=now, password_changed_at=now,
                    )
                )
                self._record_event(conn, org_id, "user.created", {"user_id": user_id, "role": role, "by": by})
            await self._write(_body)
        except IntegrityError as exc:
            raise EmailTaken("an account with this email already exists") from exc
        user = await self.user_by_id(org_id, user_id)
        assert user is not None
        return user

    async def list_users(self, org_id: str, limit: int, cursor: str | None) -> list[Row]:
        u = s.users
        query = select(u).where(u.c.org_id == org_id).order_by(u.c.id).limit(limit)
        if cursor:
            query = query.where(u.c.id > cursor)
        def _body(conn: Connection) -> Any:
            return [_row(r) for r in conn.execute(query)]
        return await self._read(_body)

    async def update_user(
        self, org_id: str, user_id: str, by: str, *, role: str | None = None, disabled: bool | None = None
    ) -> Row:
        """Change a user's role and/or disabled flag; audited, atomic.

        The org must keep at least one enabled admin, so the change that would remove
        the last one is a Conflict (only an admin can call this, so that is always the
        admin demoting or disabling themselves). Disabling revokes every session.
        """
        u = s.users
        def _body(conn: Connection) -> Any:
            user = (
                conn.execute(select(u).where(u.c.id == user_id, u.c.org_id == org_id).with_for_update())
            ).first()
            if user is None:
                raise NotFound("no such user")
            new_role = user.role if role is None else role
            new_disabled = user.disabled if disabled is None else disabled
            if user.role == "admin" and not user.disabled and (new_role != "admin" or new_disabled):
                # Lock the org's enabled admins so two admins demoting each other at
                # once (on PostgreSQL, from two relays) cannot both succeed.
                admins = conn.execute(
                    select(u.c.id).where(u.c.org_id == org_id, u.c.role == "admin", u.c.disabled.is_(False))
                    .with_for_update()
                )
                if [r.id for r in admins] == [user_id]:
                    raise Conflict("this is the org's last enabled admin: make another user admin first")
            if new_role != user.role:
                conn.execute(update(u).where(u.c.id == user_id).values(role=new_role))
                self._record_event(
                    conn, org_id, "user.role_changed",
                    {"user_id": user_id, "by": by, "from": user.role, "to": new_role},
                )
            if new_disabled != user.disabled:
                conn.execute(update(u).where(u.c.id == user_id).values(disabled=new_disabled))
                revoked = self._revoke_user_sessions(conn, user_id) if new_disabled else 0
                self._record_event(
                    conn, org_id, "user.disabled" if new_disabled else "user.enabled",
                    {"user_id": user_id, "by": by, **({"sessions_revoked": revoked} if new_disabled else {})},
                )
        try:
            await self._write(_body)
        finally:
            self._forget_users()
        row = await self.user_by_id(org_id, user_id)
        assert row is not None
        return row

    async def change_password(self, org_id: str, user_id: str, password_hash: str) -> None:
        """Store a new password hash and end every session of the user (audited)."""
        u = s.users
        def _body(conn: Connection) -> Any:
            changed = conn.execute(
                update(u).where(u.c.id == user_id, u.c.org_id == org_id)
                .values(password_hash=password_hash, password_changed_at=self.now())
            )
            if changed.rowcount != 1:
                raise NotFound("no such user")
            revoked = self._revoke_user_sessions(conn, user_id)
            self._record_event(
                conn, org_id, "user.password_changed", {"user_id": user_id, "sessions_revoked": revoked}
            )
        try:
            await self._write(_body)
        finally:
            self._forget_users()

    def _revoke_user_sessions(self, conn: Connection, user_id: str) -> int:
        """Revoke every live refresh family of a user; return how many families."""
        t = s.refresh_tokens
        families = conn.execute(
            select(t.c.family_id).where(t.c.user_id == user_id, t.c.revoked_at.is_(None)).distinct()
        )
        count = len(families.all())
        conn.execute(
            update(t).where(t.c.user_id == user_id, t.c.revoked_at.is_(None)).values(revoked_at=self.now())
        )
        return count

    async def live_refresh_families(self, user_id: str) -> int:
        """How many of the user's refresh families still hold an unrevoked token."""
        t = s.refresh_tokens
        def _body(conn: Connection) -> Any:
            rows = conn.execute(
                select(t.c.family_id).where(t.c.user_id == user_id, t.c.revoked_at.is_(None)).distinct()
            )
            return len(rows.all())
        return await self._read(_body)

    async def org_stats(self, org_id: str) -> Row:
        """Counts for the admin dashboard: users by role, devices and tasks by status."""
        u, d = s.users, s.devices
        def _body(conn: Connection) -> Any:
            users = (conn.execute(
                select(u.c.role, u.c.disabled, func.count()).where(u.c.org_id == org_id)
                .group_by(u.c.role, u.c.disabled)
            )).all()
            devices = (conn.execute(
                select(d.c.status, func.count()).where(d.c.org_id == org_id).group_by(d.c.status)
            )).all()
            return users, devices
        users, devices = await self._read(_body)
        tasks = await self.task_counts(org_id)
        by_role: dict[str, int] = {}
        disabled = 0
        for role, is_disabled, n in users:
            if is_disabled:
                disabled += n
            else:
                by_role[role] = by_role.get(role, 0) + n
        return {
            "users": {"total": sum(r[2] for r in users), "disabled": disabled, "enabled_by_role": by_role},
            "devices": {"total": sum(r[1] for r in devices), "by_status": {r[0]: r[1] for r in devices}},
            "tasks": {"total": sum(tasks.values()), "by_status": tasks},
        }

    # -- enrollment and devices --------------------------------------------------------

    async def create_enrollment_code(
        self, org_id: str, created_by: str, code_hash: str, tags: Sequence[str], ttl_s: int
    ) -> Row:
        code_id = new_id("enr")
        values = {
            "id": code_id, "org_id": org_id, "code_hash": code_hash, "created_by": created_by,
            "tags": list(tags), "created_at": self.now(), "expires_at": self.later(ttl_s),
        }
        def _body(conn: Connection) -> Any:
            conn.execute(insert(s.enrollment_codes).values(**values))
            self._record_event(
                conn, org_id, "enrollment_code.created",
                {"code_id": code_id, "by": created_by, "expires_at": values["expires_at"]},
            )
        await self._write(_body)
        return values

    async def enroll_device(
        self, code_hash: str, name: str, platform: str, public_key: str
    ) -> Row:
        """Spend an enrollment code and create the device, atomically (one use only)."""
        c = s.enrollment_codes
        now = self.now()
        device_id = new_id("dev")
        def _body(conn: Connection) -> Any:
            code = (conn.execute(select(c).where(c.c.code_hash == code_hash))).first()
            if code is None:
                raise Gone("enrollment code is not valid")
            if code.revoked_at is not None:
                raise Gone("enrollment code was revoked")
            if code.used_at is not None:
                raise Gone("enrollment code was already used")
            if code.expires_at <= now:
                raise Gone("enrollment code has expired")
            spent = conn.execute(
                update(c)
                .where(c.c.id == code.id, c.c.used_at.is_(None))
                .values(used_at=now, used_by_device=device_id)
            )
            if spent.rowcount != 1:
                raise Gone("enrollment code was already used")
            try:
                conn.execute(
                    insert(s.devices).values(
                        id=device_id, org_id=code.org_id, name=name, platform=platform,
                        public_key=public_key, tags=list(code.tags), status="active",
                        enrolled_at=now,
                    )
                )
            except IntegrityError as exc:
                raise Conflict("this public key is already enrolled") from exc
            self._record_event(
                conn, code.org_id, "device.enrolled",
                {"device_id": device_id, "name": name, "platform": platform, "code_id": code.id,
                 "public_key": public_key},
            )
        await self._write(_body)
        device = await self.device_unscoped(device_id)
        assert device is not None
        return device

    async def device_unscoped(self, device_id: str) -> Row | None:
        """A device by id alone: only for device-authenticated paths, which then bind the org."""
        return await self._one(q.DEVICE, {"b_id": device_id})

    async def device(self, org_id: str, device_id: str) -> Row | None:
        return await self._one(q.ORG_DEVICE, {"b_id": device_id, "b_org": org_id})

    async def list_devices(self, org_id: str, limit: int, cursor: str | None) -> list[Row]:
        d = s.devices
        query = select(d).where(d.c.org_id == org_id).order_by(d.c.id).limit(limit)
        if cursor:
            query = query.where(d.c.id > cursor)
        def _body(conn: Connection) -> Any:
            return [_row(r) for r in conn.execute(query)]
        return await self._read(_body)

    async def device_public_keys(self, org_id: str) -> dict[str, str]:
        d = s.devices
        def _body(conn: Connection) -> Any:
            rows = conn.execute(select(d.c.id, d.c.public_key).where(d.c.org_id == org_id))
            return {r.id: r.public_key for r in rows}
        return await self._read(_body)

    async def spend_device_nonce(self, device_id: str, nonce: str, keep_s: int) -> bool:
        """Remember a token-request nonce; False if it was seen before (a replay)."""
        try:
            def _body(conn: Connection) -> Any:
                q.DELETE_EXPIRED_NONCES.run(conn, {"b_now": self.now()})
                q.INSERT_NONCE.run(conn, {"device_id": device_id, "nonce": nonce, "expires_at": self.later(keep_s)})
            await self._write(_body)
        except IntegrityError:
            return False
        return True

    async def touch_devices(self, seen: Mapping[str, tuple[str, Mapping[str, Any] | None]]) -> None:
        """Record ``last_seen`` (and telemetry) of many devices, ``TOUCH_SLICE`` rows
        per write: task writes queued meanwhile go between the slices instead of
        waiting behind thousands of heartbeat rows."""
        rows = [
            {"b_id": device_id, "last_seen": at, **({"telemetry": dict(telemetry)} if telemetry is not None else {})}
            for device_id, (at, telemetry) in seen.items()
        ]
        for start in range(0, len(rows), TOUCH_SLICE):
            await self._write(partial(_touch, rows[start:start + TOUCH_SLICE]))

    async def revoked_since(self, since: str) -> list[str]:
        """Devices revoked at or after ``since`` (the hub closes their sessions)."""
        d = s.devices

        def _body(conn: Connection) -> list[str]:
            return list(conn.execute(select(d.c.id).where(d.c.revoked_at >= since)).scalars())
        return await self._read(_body)

    async def devices_with_new_tasks(self, since: str) -> list[str]:
        """Devices with tasks queued at or after ``since``, wherever they were created."""
        t = s.tasks

        def _body(conn: Connection) -> list[str]:
            return list(conn.execute(
                select(t.c.device_id).where(t.c.status == "queued", t.c.created_at >= since).distinct()
            ).scalars())
        return await self._read(_body)

    async def record_presence(self, device: Row, online: bool, reason: str = "") -> None:
        def _body(conn: Connection) -> Any:
            q.SET_DEVICE.run(conn, {"b_id": device["id"], "last_seen": self.now()})
            self._record_event(
                conn, device["org_id"], "device.online" if online else "device.offline",
                {"device_id": device["id"], **({"reason": reason} if reason else {})},
            )
        await self._write(_body)

    async def revoke_device(self, org_id: str, device_id: str, by: str) -> Row:
        d = s.devices
        def _body(conn: Connection) -> Any:
            changed = conn.execute(
                update(d)
                .where(d.c.id == device_id, d.c.org_id == org_id, d.c.status == "active")
                .values(status="revoked", revoked_at=self.now())
            )
            if changed.rowcount == 1:
                self._record_event(conn, org_id, "device.revoked", {"device_id": device_id, "by": by})
        await self._write(_body)
        device = await self.device(org_id, device_id)
        if device is None:
            raise NotFound("no such device")
        return device

    # -- enrollment code lifecycle (issue 3: devices, tokens, route authorization) -----

    async def list_enrollment_codes(self, org_id: str, include_spent: bool = False) -> list[Row]:
        """The org's enrollment codes, newest first: by default only those that could
        still enroll a device (unused, unrevoked, unexpired)."""
        c = s.enrollment_codes
        query = select(c).where(c.c.org_id == org_id).order_by(c.c.id.desc()).limit(500)
        if not include_spent:
            query = query.where(c.c.used_at.is_(None), c.c.revoked_at.is_(None), c.c.expires_at > self.now())
        def _body(conn: Connection) -> Any:
            return [_row(r) for r in conn.execute(query)]
        return await self._read(_body)

    async def revoke_enrollment_code(self, org_id: str, code_id: str, by: str) -> Row:
        """Revoke an unused code of the org. Revoking a revoked code changes nothing;
        a used code cannot be revoked (revoke the device instead): :class:`Conflict`."""
        c = s.enrollment_codes
        def _body(conn: Connection) -> Any:
            code = (conn.execute(select(c).where(c.c.id == code_id, c.c.org_id == org_id))).first()
            if code is None:
                raise NotFound("no such enrollment code")
            if code.used_at is not None:
                raise Conflict("enrollment code was already used; revoke the device instead")
            changed = conn.execute(
                update(c)
                .where(c.c.id == code_id, c.c.used_at.is_(None), c.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
            if changed.rowcount == 1:
                self._record_event(conn, org_id, "enrollment_code.revoked", {"code_id": code_id, "by": by})
            row = (conn.execute(select(c).where(c.c.id == code_id))).first()
            assert row is not None
            return _row(row)
        return await self._write(_body)

    # -- tasks --------------------------------------------------------------------------

    async def create_task(
        self,
        *,
        org_id: str,
        device_id: str,
        action: str,
        params: Mapping[str, Any],
        risk: Mapping[str, Any],
        status: str,
        created_by: str,
        timeout_s: float,
        expires_at: str,
    ) -> Row:
        """Persist a task for an active device of the org (checked in the same
        transaction: :class:`NotFound`, or :class:`Conflict` if it is revoked).

        ``status="dispatched"`` is for a device whose session is on this relay: the
        caller sends the task right after this returns, so it skips the queue (one
        write instead of three); if the send is lost, the device's next session gets
        it again like any task sent but not yet reported.
        """
        now = self.now()
        task_id = new_id("tsk")
        values = {
            "id": task_id, "org_id": org_id, "device_id": device_id, "action": action,
            "params": dict(params), "status": status, "risk": dict(risk), "created_by": created_by,
            "created_at": now, "updated_at": now, "timeout_s": timeout_s, "expires_at": expires_at,
            "dispatched_at": None, "attempts": 0,
        }
        if status == "dispatched":
            values |= {"dispatched_at": now, "attempts": 1}
        def _body(conn: Connection) -> Any:
            if q.INSERT_TASK_FOR_ACTIVE_DEVICE.first(conn, values) is None:
                device = conn.execute(q.ORG_DEVICE, {"b_id": device_id, "b_org": org_id}).first()
                raise NotFound("no such device") if device is None else Conflict("device is revoked")
            self._record_event(
                conn, org_id, "task.created",
                {"device_id": device_id, "action": action, "status": status, "by": created_by,
                 "risk": risk.get("level")},
                task_id=task_id,
            )
        await self._write(_body)
        return values

    async def task(self, org_id: str, task_id: str) -> Row | None:
        return await self._one(select(s.tasks).where(s.tasks.c.id == task_id, s.tasks.c.org_id == org_id))

    async def list_tasks(
        self,
        org_id: str,
        *,
        device_id: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        max_bytes: int | None = None,
    ) -> list[Row]:
        """The org's tasks, newest first: at most ``limit``, and with ``max_bytes``, no
        more than fit in that many bytes of JSON params and results (at least one).

        A task's result is stored inline and may be megabytes, so a page of 500 could
        be gigabytes: the rows are streamed (a server-side cursor on PostgreSQL) and
        reading stops at the budget. A caller told fewer rows than ``limit`` cannot
        know why; it asks for ``limit + 1`` and reads a short page with
        :func:`page_was_cut`.
        """
        t = s.tasks
        query = select(t).where(t.c.org_id == org_id)
        if device_id:
            query = query.where(t.c.device_id == device_id)
        if status:
            query = query.where(t.c.status == status)
        if cursor:
            query = query.where(t.c.id < cursor)
        query = query.order_by(t.c.id.desc()).limit(limit)
        def _body(conn: Connection) -> Any:
            if max_bytes is None:
                return [_row(r) for r in conn.execute(query)]
            rows: list[Row] = []
            spent = 0
            result = conn.execution_options(stream_results=True, max_row_buffer=50).execute(query)
            try:
                for raw in result:
                    row = _row(raw)
                    spent += task_json_bytes(row)
                    if rows and spent > max_bytes:
                        row[PAGE_CUT] = True
                        rows.append(row)  # marks the cut; the caller drops it
                        break
                    rows.append(row)
            finally:
                result.close()
            return rows
        return await self._read(_body)

    async def deliverable_tasks(self, device_id: str, *, redeliver: bool = True, limit: int = 500) -> list[Row]:
        """Tasks the device should get, oldest first: queued ones, and with ``redeliver``
        (a new session) also those sent before but not yet reported."""
        query = q.UNREPORTED_TASKS if redeliver else q.QUEUED_TASKS
        params = {"b_device": device_id, "b_now": self.now(), "b_limit": limit}

        def _body(conn: Connection) -> Any:
            return [_row(r) for r in conn.execute(query, params)]
        return await self._read(_body)

    def _transition(
        self,
        conn: Connection,
        task: Any,
        new_status: str,
        from_statuses: Sequence[str],
        extra: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
    ) -> bool:
        """Compare-and-set a task's status; audit the change if it happened."""
        changed = q.move_task(tuple(from_statuses)).run(conn, {
            "b_id": task.id, "status": new_status, "updated_at": self.now(), **(extra or {}),
        })
        if changed != 1:
            return False
        self._record_event(
            conn, task.org_id, "task.state",
            {"device_id": task.device_id, "from": task.status, "to": new_status, **(event or {})},
            task_id=task.id,
        )
        return True

    def _task_state(self, conn: Connection, task_id: str, device_id: str | None = None) -> Any:
        """The task's id, org, device, status, timeout, start, attempts and ``has_result`` (or None)."""
        if device_id is None:
            return q.TASK_STATE.first(conn, {"b_id": task_id})
        return q.DEVICE_TASK_STATE.first(conn, {"b_id": task_id, "b_device": device_id})

    async def mark_dispatched(self, device_id: str, task_id: str) -> bool:
        return task_id in await self.mark_dispatched_many(device_id, [task_id])

    async def mark_dispatched_many(self, device_id: str, task_ids: Sequence[str]) -> list[str]:
        """Record that these tasks of the device are being sent (one write); return
        the ids that may be sent: still queued, or sent before and not yet reported."""
        def _body(conn: Connection) -> list[str]:
            sendable = []
            for task_id in task_ids:
                task = self._task_state(conn, task_id, device_id)
                if task is None or task.status not in ("queued", "dispatched"):
                    continue
                if task.status == "dispatched":
                    # A redelivery after a reconnect: count it, no state change to audit.
                    conn.execute(
                        update(s.tasks).where(s.tasks.c.id == task_id).values(attempts=s.tasks.c.attempts + 1)
                    )
                    sendable.append(task_id)
                elif self._transition(
                    conn, task, "dispatched", ("queued",),
                    {"dispatched_at": self.now(), "attempts": task.attempts + 1},
                ):
                    sendable.append(task_id)
            return sendable
        return await self._write(_body)

    async def mark_running(self, device_id: str, task_id: str) -> bool:
        return bool(await self.mark_running_many([(device_id, task_id, self.now())]))

    async def mark_running_many(self, received: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
        """Mark tasks running as their devices reported them received, in one write:
        ``(device id, task id, received at)`` each. Returns the ``(device id, task
        id)`` pairs that moved; another device's task, or one already settled, does not."""
        def _body(conn: Connection) -> list[tuple[str, str]]:
            moved = []
            for device_id, task_id, received_at in received:
                task = self._task_state(conn, task_id, device_id)
                if task is not None and self._transition(
                    conn, task, "running", ("queued", "dispatched"),
                    {"started_at": received_at, "deadline_at": self.later(task.timeout_s + 30)},
                ):
                    moved.append((device_id, task_id))
            return moved
        return await self._write(_body)

    async def store_result(
        self, device_id: str, task_id: str, status: str, result: Mapping[str, Any],
        received_at: str | None = None,
    ) -> str:
        """Record a device's result. Returns ``stored``, ``duplicate`` or ``unknown``.

        ``unknown`` means no task with that id belongs to *this* device: a device
        cannot report on another's tasks. A result for a task already settled
        (cancelled, timed out) is kept as ``result`` but does not change the status.
        ``received_at`` is when the device reported the task received, for a task
        whose ``running`` state was never written (it finished first).
        """
        def _body(conn: Connection) -> Any:
            task = self._task_state(conn, task_id, device_id)
            if task is None:
                return "unknown"
            if task.has_result:
                return "duplicate"
            extra = {"result": dict(result), "finished_at": result.get("finished_at") or self.now()}
            if received_at is not None and task.started_at is None:
                extra["started_at"] = received_at
            moved = self._transition(
                conn, task, status, ACTIVE_TASK_STATUSES, extra,
                {"ok": bool(result.get("ok")), "error": result.get("error")},
            )
            if not moved:
                q.SET_TASK.run(conn, {"b_id": task_id, "result": dict(result)})
            return "stored"
        return await self._write(_body)

    async def cancel_task(self, org_id: str, task_id: str, by: str) -> Row:
        def _body(conn: Connection) -> Any:
            task = self._task_state(conn, task_id)
            if task is None or task.org_id != org_id:
                raise NotFound("no such task")
            if not self._transition(
                conn, task, "cancelled", ("created", "awaiting_approval", "approved", *ACTIVE_TASK_STATUSES),
                {"finished_at": self.now()}, {"by": by},
            ):
                raise Conflict(f"task is already {task.status}")
        await self._write(_body)
        row = await self.task(org_id, task_id)
        assert row is not None
        return row

    async def sweep_tasks(self) -> list[Row]:
        """Settle tasks whose time ran out; return the changed rows (id, org, device, status)."""
        t = s.tasks
        now = self.now()
        def _body(conn: Connection) -> list[Row]:
            changed: list[Row] = []
            stale = conn.execute(
                select(t).where(
                    or_(
                        and_(t.c.status.in_(("queued", "dispatched", "awaiting_approval", "approved")), t.c.expires_at <= now),
                        and_(t.c.status == "running", t.c.deadline_at <= now),
                    )
                ).limit(500)
            )
            for task in stale.all():
                new_status = "timed_out" if task.status == "running" else "expired"
                if self._transition(conn, task, new_status, (task.status,), {"finished_at": now}):
                    changed.append({"id": task.id, "org_id": task.org_id, "device_id": task.device_id, "status": new_status})
            return changed
        return await self._write(_body)

    async def task_counts(self, org_id: str) -> dict[str, int]:
        t = s.tasks
        def _body(conn: Connection) -> Any:
            rows = conn.execute(
                select(t.c.status, func.count()).where(t.c.org_id == org_id).group_by(t.c.status)
            )
            return {r[0]: r[1] for r in rows}
        return await self._read(_body)

    # -- audit chain heads ------------------------------------------------------------

    async def audit_head(self, chain_id: str) -> ChainHead | None:
        def _body(conn: Connection) -> Any:
            row = q.AUDIT_HEAD.first(conn, {"b_chain": chain_id})
            return ChainHead(row.seq, row.hash) if row else None
        return await self._read(_body)

    async def advance_audit_head(
        self, chain_id: str, org_id: str, old: ChainHead | None, new: ChainHead
    ) -> bool:
        """Compare-and-set the stored head: False if someone else moved it first."""
        def _body(conn: Connection) -> bool:
            if old is None:
                try:
                    with conn.begin_nested():
                        q.INSERT_AUDIT_HEAD.run(conn, {
                            "chain_id": chain_id, "org_id": org_id, "seq": new.seq, "hash": new.hash,
                            "updated_at": self.now(),
                        })
                except IntegrityError:
                    return False
                return True
            moved = q.MOVE_AUDIT_HEAD.run(conn, {
                "b_chain": chain_id, "b_seq": old.seq, "b_hash": old.hash, "seq": new.seq, "hash": new.hash,
                "updated_at": self.now(),
            })
            return moved == 1
        return await self._write(_body)
