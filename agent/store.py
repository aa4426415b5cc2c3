"""The agent's one SQLite database: the audit outbox and the task journal.

Two promises live here, and both rest on SQLite transactions:

* **The audit chain never forks or gaps.** Each record is built from the persisted
  chain head and written in the *same* transaction that advances the head, so a
  crash leaves either both or neither. Records stay in the outbox until the relay
  acks them by ``(last_seq, head_hash)``; the head survives deletion of acked
  records, so the chain continues across restarts.
* **A redelivered task never runs twice.** :meth:`AgentStore.begin_task` journals a
  task id as ``running`` before the runner executes it; a second delivery of the
  same id sees ``running`` or ``done`` and is not executed again. Tasks still
  ``running`` at start-up were interrupted by a crash: they are reported as failed,
  never re-run, because the action may already have had its effect.

The database runs in WAL mode with ``synchronous=FULL``: a record that
:meth:`AgentStore.append_audit` returned is on disk, even across power loss, and so
is a journal entry or a result. The relay's acknowledgements are the exception
(:meth:`AgentStore.ack_audit`, :meth:`AgentStore.ack_result`): they commit without
waiting for the disk, and the next commit that does wait takes them along (the WAL is
written in order). Power lost in between forgets only the ack, and the agent sends
those records or that result again, which the relay recognises and acknowledges
again; a crash of the process alone loses nothing, since the operating system holds
the write.
A write the disk has no room for (SQLite's SQLITE_FULL: the disk, a quota, or the
database's page limit; SQLITE_IOERR_WRITE: a file-size limit or a failing disk) writes nothing and raises :class:`~coact.agent.errors.DiskFullError`;
:attr:`AgentStore.full` says so until a write succeeds again.
All methods are synchronous and thread-safe (one connection behind a lock); the
asyncio side calls them through :meth:`AgentStore.call`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import sqlite_utils

from coact.agent.errors import DiskFullError
from coact.shared.canonical import canonical_json
from coact.shared.chain import GENESIS, ChainHead, make_record
from coact.shared.clock import Clock, to_rfc3339

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1

TaskState = Literal["new", "running", "done"]
AuditItem = tuple[str, Mapping[str, Any] | None, str | None]
"""``(kind, data, task_id)``, as taken by :meth:`AgentStore.append_audit_many`."""


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """Records waiting for the relay's ack (:meth:`AgentStore.pending_batch`)."""

    head: ChainHead  # the last record: what the batch signature covers
    records: list[str]  # each record's canonical JSON, oldest first


# Migrations by target version; migration N brings a version N-1 database to N.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # Exactly one row: the last record ever appended (acked or not) and the last
        # ack, so a duplicate ack after a reconnect is recognised, not refused.
        """CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL,
            acked_seq INTEGER NOT NULL,
            acked_hash TEXT NOT NULL
        )""",
        """CREATE TABLE audit_outbox (
            seq INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            record TEXT NOT NULL
        )""",
        """CREATE TABLE task_journal (
            task_id TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('running', 'done')),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            finish_order INTEGER UNIQUE,
            result TEXT,
            result_acked INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX task_journal_state ON task_journal (state)",
        "CREATE INDEX task_journal_unacked ON task_journal (result_acked, finish_order)",
    ),
}


class AgentStore:
    """The agent's durable state: audit outbox plus task journal (see module docs)."""

    def __init__(self, path: Path, device_id: str, clock: Clock) -> None:
        if not device_id:
            raise ValueError("device_id must not be empty")
        self.path = Path(path)
        self.device_id = device_id
        self._clock = clock
        self._lock = threading.Lock()
        self._in_memory = str(path) == ":memory:"
        self.full: str | None = None
        """Why the last write failed for want of space, or None if it did not."""
        # One connection shared by every thread; the lock serialises its use.
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        try:
            self._db = sqlite_utils.Database(conn, execute_plugins=False)
            self._db.enable_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except BaseException:
            conn.close()
            raise

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's methods for the event loop: in a worker thread when
        the database is a file (a commit waits for the disk), in place when it is in
        memory (the fleet simulator's), where the thread hand-off cost more than the
        call itself."""
        if self._in_memory:
            return method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}; this agent knows up to "
                f"{SCHEMA_VERSION} (downgrade is not supported)"
            )
        with self._db.atomic():
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    self._db.execute(statement)
                if target == 1:
                    self._db.execute(
                        "INSERT INTO chain_head (id, seq, hash, acked_seq, acked_hash) "
                        "VALUES (1, ?, ?, ?, ?)",
                        [GENESIS.seq, GENESIS.hash, GENESIS.seq, GENESIS.hash],
                    )
                # PRAGMA takes no bound parameters; target is our own int.
                self._db.execute(f"PRAGMA user_version = {int(target)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AgentStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock). SQLITE_FULL rolls it back
        and becomes :class:`DiskFullError`; any write that commits clears the state."""
        try:
            with self._db.atomic():
                yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_IOERR_WRITE:
                # What a write past a file-size limit (EFBIG) or a failing disk gives;
                # SQLite rolls back, and the same connection writes again once it can.
                self.full = f"disk full or failing: the agent database {self.path} refused a write ({exc})"
            elif exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                self.full = f"disk full: the agent database {self.path} cannot grow ({exc})"
            else:
                raise
            raise DiskFullError(self.full) from exc
        self.full = None

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Commit the transaction inside without waiting for the disk (module docs:
        for acknowledgements only, which the relay can give again)."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    # -- audit outbox ------------------------------------------------------------

    def _head(self) -> ChainHead:
        seq, hash_ = self._db.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        return ChainHead(int(seq), str(hash_))

    def _append(
        self, head: ChainHead, kind: str, data: Mapping[str, Any] | None, task_id: str | None
    ) -> dict[str, Any]:
        record = make_record(
            head,
            device_id=self.device_id,
            kind=kind,
            ts=to_rfc3339(self._clock.now()),
            data=data,
            task_id=task_id,
        )
        self._db.execute(
            "INSERT INTO audit_outbox (seq, hash, record) VALUES (?, ?, ?)",
            [record["seq"], record["hash"], canonical_json(record).decode("utf-8")],
        )
        return record

    def _set_head(self, head: ChainHead) -> None:
        self._db.execute(
            "UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", [head.seq, head.hash]
        )

    def append_audit(
        self, kind: str, data: Mapping[str, Any] | None = None, task_id: str | None = None
    ) -> dict[str, Any]:
        """Append one record to the chain and return it.

        Raises :class:`~coact.shared.errors.CanonicalizationError` (and writes
        nothing) when ``data`` has no canonical JSON form.
        """
        with self._lock, self._write():
            return self._append_items([(kind, data, task_id)])[0]

    def append_audit_many(self, items: Iterable[AuditItem]) -> list[dict[str, Any]]:
        """Append several ``(kind, data, task_id)`` records in one transaction (all or none)."""
        with self._lock, self._write():
            return self._append_items(items)

    def _append_items(self, items: Iterable[AuditItem]) -> list[dict[str, Any]]:
        """Append records inside the caller's transaction."""
        records: list[dict[str, Any]] = []
        head = self._head()
        for kind, data, task_id in items:
            record = self._append(head, kind, data, task_id)
            head = ChainHead(record["seq"], record["hash"])
            records.append(record)
        if records:
            self._set_head(head)
        return records

    def restore_head(self, head: ChainHead) -> None:
        """Continue, in an empty outbox, a chain whose records up to ``head`` the relay holds.

        For the fleet simulator's in-memory stores, which start empty on every run while
        the relay remembers each device's chain. Refused once anything was appended.
        """
        with self._lock, self._write():
            if self._head() != GENESIS:
                raise ValueError("restore_head needs a store with no records yet")
            self._db.execute(
                "UPDATE chain_head SET seq = ?, hash = ?, acked_seq = ?, acked_hash = ? WHERE id = 1",
                [head.seq, head.hash, head.seq, head.hash],
            )

    def audit_head(self) -> ChainHead:
        """The last record ever appended, whether or not the relay has acked it."""
        with self._lock:
            return self._head()

    def pending_audit(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records not yet acked by the relay, oldest first, parsed."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        batch = self.pending_batch(limit, sys.maxsize) if limit else None
        return [json.loads(text) for text in batch.records] if batch else []

    def pending_batch(self, limit: int, max_bytes: int) -> OutboxBatch | None:
        """The oldest records not yet acked -- at most ``limit`` of them and, but for a
        first record larger on its own, at most ``max_bytes`` of JSON -- as the text
        stored at append (canonical, so exactly what was hashed); None when none wait.

        The upload puts these texts into the frame as they are: a million buffered
        records are read, not parsed and encoded again.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, hash, record FROM audit_outbox ORDER BY seq LIMIT ?", [limit]
            ).fetchall()
        texts: list[str] = []
        size = 0
        for seq, hash_, text in rows:
            size += len(text.encode()) + 1  # and the comma between records
            if texts and size > max_bytes:
                break
            texts.append(text)
            head = ChainHead(int(seq), str(hash_))
        return OutboxBatch(head, texts) if texts else None

    def pending_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM audit_outbox").fetchone()[0])

    def ack_audit(self, last_seq: int, head_hash: str) -> int:
        """Forget records up to ``last_seq`` now that the relay has stored them.

        The ack must name the exact record the agent holds at ``last_seq`` (its
        hash); anything else — a relay that confuses devices, a forged ack — raises
        :class:`ValueError` and deletes nothing. Repeating the last ack is a no-op.
        Returns the number of records deleted.
        """
        with self._lock, self._unsynced(), self._write():
            row = self._db.execute(
                "SELECT hash FROM audit_outbox WHERE seq = ?", [last_seq]
            ).fetchone()
            if row is None:
                acked_seq, acked_hash = self._db.execute(
                    "SELECT acked_seq, acked_hash FROM chain_head WHERE id = 1"
                ).fetchone()
                if (last_seq, head_hash) == (acked_seq, acked_hash):
                    return 0
                raise ValueError(f"ack for seq {last_seq}: no such record is pending")
            if row[0] != head_hash:
                raise ValueError(
                    f"ack for seq {last_seq} names hash {head_hash[:12]}…, "
                    f"the record has {str(row[0])[:12]}…"
                )
            deleted = self._db.execute(
                "DELETE FROM audit_outbox WHERE seq <= ?", [last_seq]
            ).rowcount
            self._db.execute(
                "UPDATE chain_head SET acked_seq = ?, acked_hash = ? WHERE id = 1",
                [last_seq, head_hash],
            )
        return int(deleted)

    # -- task journal ------------------------------------------------------------

    def begin_task(self, task_id: str, spec: Mapping[str, Any], audit: Iterable[AuditItem] = ()) -> TaskState:
        """Journal ``task_id`` as running and return ``"new"``, or return its known state.

        Only a ``"new"`` answer allows the caller to execute the task; the ``audit``
        records are appended with the journal entry, and only then.
        """
        spec_text = canonical_json(dict(spec)).decode("utf-8")
        now = to_rfc3339(self._clock.now())
        with self._lock, self._write():
            inserted = self._db.execute(
                "INSERT INTO task_journal (task_id, spec, state, started_at) "
                "VALUES (?, ?, 'running', ?) ON CONFLICT (task_id) DO NOTHING",
                [task_id, spec_text, now],
            ).rowcount
            if inserted:
                self._append_items(audit)
                return "new"
            state = self._db.execute(
                "SELECT state FROM task_journal WHERE task_id = ?", [task_id]
            ).fetchone()[0]
        return "done" if state == "done" else "running"

    def finish_task(self, task_id: str, result: Mapping[str, Any], audit: Iterable[AuditItem] = ()) -> None:
        """Store the result of a journaled task and mark it done, with the ``audit``
        records that say how it ended (one transaction: both or neither).

        Raises :class:`KeyError` for a task that was never begun and
        :class:`ValueError` for one that is already done (its first result stands).
        """
        result_text = canonical_json(dict(result)).decode("utf-8")
        now = to_rfc3339(self._clock.now())
        with self._lock, self._write():
            row = self._db.execute(
                "SELECT state FROM task_journal WHERE task_id = ?", [task_id]
            ).fetchone()
            if row is None:
                raise KeyError(task_id)
            if row[0] == "done":
                raise ValueError(f"task {task_id} is already finished")
            self._db.execute(
                "UPDATE task_journal SET state = 'done', result = ?, finished_at = ?, "
                "finish_order = (SELECT coalesce(max(finish_order), 0) + 1 FROM task_journal) "
                "WHERE task_id = ?",
                [result_text, now, task_id],
            )
            self._append_items(audit)

    def task_result(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM task_journal WHERE task_id = ? AND state = 'done'", [task_id]
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def unacked_results(self) -> list[dict[str, Any]]:
        """Results stored but not yet acked by the relay, in the order they finished."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result FROM task_journal WHERE state = 'done' AND result_acked = 0 "
                "ORDER BY finish_order"
            ).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    def ack_result(self, task_id: str) -> None:
        """The relay has the result; the journal entry stays so a redelivery is still refused."""
        with self._lock, self._unsynced(), self._write():
            self._db.execute(
                "UPDATE task_journal SET result_acked = 1 WHERE task_id = ? AND state = 'done'",
                [task_id],
            )

    def interrupted_tasks(self) -> list[str]:
        """Tasks left ``running`` (by a crash, when called at start-up), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id FROM task_journal WHERE state = 'running' ORDER BY rowid"
            ).fetchall()
        return [str(row[0]) for row in rows]
