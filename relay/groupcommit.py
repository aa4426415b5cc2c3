"""Group commit: many short write transactions share one database commit.

Every write of a relay process is a plain function over a SQLAlchemy connection
(a *body*), run by one writer thread, one body at a time, each inside its own
SAVEPOINT of a shared transaction. The writer takes every body that is waiting,
runs them, and commits once: under load one commit (one fsync on SQLite, one round
trip on PostgreSQL) covers the whole group; with no load a lone write commits at
once. A caller's ``await`` returns only after the commit that holds its body:
nothing is acknowledged before it is durable.

Running whole bodies in the thread costs the event loop one hand-off per write,
instead of one per SQL statement with an async driver.

Failure isolation: a body that raises rolls back to its savepoint and the error goes
to that caller alone; a failed commit fails every caller of the group. Savepoints
cost two statements per body, so a group first runs without them: only when one of
its bodies raises is the transaction rolled back and the group run again, a savepoint
per body. A body may therefore run twice; it must change nothing but the database and
the state that ``before_body``'s undo restores.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, event

log = logging.getLogger("coact.relay.groupcommit")

T = TypeVar("T")
Body = Callable[[Connection], T]
MAX_GROUP = 512


def prepare_sqlite_writer(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, drive transactions, and start each one
    with ``BEGIN IMMEDIATE``: savepoints then work, and a second relay process on the
    same file waits for the write lock instead of failing on a stale snapshot."""

    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class _Job(Generic[T]):
    body: Body[T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(
        self,
        engine: Engine,
        *,
        before_body: Callable[[], Callable[[], None]],
        before_commit: Callable[[Connection], None],
        after_abort: Callable[[], None],
    ) -> None:
        """``before_body`` returns an undo callable run if the body fails;
        ``before_commit`` writes state kept in memory during the group;
        ``after_abort`` forgets it when a commit fails."""
        self._engine = engine
        self._before_body = before_body
        self._before_commit = before_commit
        self._after_abort = after_abort
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="coact-writer", daemon=True)
        self._thread.start()

    async def run(self, body: Body[T]) -> T:
        """Run ``body`` atomically in the writer; return its result once committed."""
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(body, loop, loop.create_future())
        self._jobs.put(job)
        # Shielded: a caller that goes away must not lose track of a committed write.
        return await asyncio.shield(job.future)

    async def close(self) -> None:
        """Finish every queued write, then stop the writer thread."""
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        with self._engine.connect() as conn:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    group.append(job)
                self._run_group(conn, group)
                if stop:
                    return

    def _run_group(self, conn: Connection, group: list[_Job[Any]]) -> None:
        if not self._run_without_savepoints(conn, group):
            self._run_with_savepoints(conn, group)
        for loop, jobs in _by_loop(group).items():
            loop.call_soon_threadsafe(_settle, jobs)

    def _run_without_savepoints(self, conn: Connection, group: list[_Job[Any]]) -> bool:
        """The common case, every body succeeds: one transaction, no savepoints.
        False (and nothing written, nothing kept) if anything raised, unless the
        group is one body: then its error is its answer, there is nothing to keep apart."""
        undo = self._before_body()
        running: _Job[Any] | None = None
        try:
            with conn.begin():
                for running in group:
                    running.result = running.body(conn)
                running = None
                self._before_commit(conn)
        except Exception as exc:
            undo()
            for job in group:
                job.result = None
            if running is not None and len(group) == 1:
                running.error = exc
                return True
            return False
        return True

    def _run_with_savepoints(self, conn: Connection, group: list[_Job[Any]]) -> None:
        try:
            with conn.begin():
                for job in group:
                    undo = self._before_body()
                    try:
                        with conn.begin_nested():
                            job.result = job.body(conn)
                    except Exception as exc:
                        undo()
                        job.error = exc
                self._before_commit(conn)
        except Exception as exc:
            log.error("group commit of %d writes failed: %s", len(group), exc)
            self._after_abort()
            for job in group:
                if job.error is None:
                    job.error = exc


def _by_loop(group: list[_Job[Any]]) -> dict[asyncio.AbstractEventLoop, list[_Job[Any]]]:
    loops: dict[asyncio.AbstractEventLoop, list[_Job[Any]]] = {}
    for job in group:
        loops.setdefault(job.loop, []).append(job)
    return loops


def _settle(jobs: list[_Job[Any]]) -> None:
    """Resolve a group's futures: one event-loop hand-off for the whole group."""
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)
