"""Group commit: many short write transactions share one database commit.

Every write of a relay process runs on one connection, one body at a time, each body
inside its own SAVEPOINT of a shared transaction. A committer task commits whatever
bodies have finished as soon as the connection is free, so under load one commit
(one fsync on SQLite, one round trip on PostgreSQL) covers a whole group, and with no
load a lone write commits at once. A caller returns only after the commit that holds
its body: nothing is acknowledged before it is durable.

Failure isolation: a body that raises rolls back to its savepoint and the error goes
to that caller alone; a failed commit fails every caller of that group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("coact.relay.groupcommit")


def prepare_sqlite_writer(engine: AsyncEngine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, drive transactions, and start each one
    with ``BEGIN IMMEDIATE``: savepoints then work, and a second relay process on the
    same file waits for the write lock instead of failing on a stale snapshot."""

    @event.listens_for(engine.sync_engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class GroupCommit:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        before_commit: Callable[[AsyncConnection], Awaitable[None]],
        after_abort: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._before_commit = before_commit
        self._after_abort = after_abort
        self._lock = asyncio.Lock()
        self._conn: AsyncConnection | None = None
        self._group: asyncio.Future[None] | None = None
        self._has_work = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._committer = asyncio.create_task(self._commit_loop(), name="group-commit")

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        async with self._lock:
            await self._commit_group()
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Run the block as one atomic unit and return once it is committed."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._engine.connect()
            conn = self._conn
            if not conn.in_transaction():
                await conn.begin()
            async with conn.begin_nested():
                yield conn
            if self._group is None:
                self._group = asyncio.get_running_loop().create_future()
            group = self._group
            self._has_work.set()
        # Shielded: a caller that goes away must not cancel the commit others wait for.
        await asyncio.shield(group)

    async def _commit_loop(self) -> None:
        while True:
            await self._has_work.wait()
            async with self._lock:
                self._has_work.clear()
                await self._commit_group()

    async def _commit_group(self) -> None:
        """Commit the open transaction and release its callers (lock held)."""
        group, self._group = self._group, None
        conn = self._conn
        if conn is None or not conn.in_transaction():
            if group is not None and not group.done():
                group.set_result(None)
            return
        try:
            await self._before_commit(conn)
            await conn.commit()
        except Exception as exc:
            log.error("group commit failed: %s", exc)
            with contextlib.suppress(Exception):
                await conn.rollback()
            self._after_abort()
            if group is not None and not group.done():
                group.set_exception(exc)
                group.exception()  # retrieved here: each caller re-raises it
            return
        if group is not None and not group.done():
            group.set_result(None)
