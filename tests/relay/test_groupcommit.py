"""Group commit on a real SQLite file: shared commits, and failures kept to their caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text

from coact.relay.groupcommit import GroupCommit, prepare_sqlite_writer


class Harness:
    """A writer over a one-table database, counting commits and undos."""

    def __init__(self, path: Path) -> None:
        self.engine: Engine = create_engine(f"sqlite:///{path}")
        prepare_sqlite_writer(self.engine)
        with self.engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v TEXT PRIMARY KEY)"))
        self.commits = 0
        self.undos = 0
        self.fail_commit = False
        event.listen(self.engine, "commit", self._count_commit)
        self.writer = GroupCommit(
            self.engine, before_body=self._before_body, before_commit=self._before_commit, after_abort=lambda: None,
        )

    def _count_commit(self, _conn: Any) -> None:
        self.commits += 1

    def _before_body(self) -> Callable[[], None]:
        def undo() -> None:
            self.undos += 1
        return undo

    def _before_commit(self, conn: Connection) -> None:
        # Only a commit that would store rows fails, so the holding write still commits.
        if self.fail_commit and conn.execute(text("SELECT count(*) FROM t")).scalar_one():
            raise RuntimeError("disk on fire")

    def rows(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT v FROM t"))}


def insert(value: str) -> Callable[[Connection], str]:
    def body(conn: Connection) -> str:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        return value
    return body


def failing(value: str) -> Callable[[Connection], str]:
    def body(conn: Connection) -> str:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        raise LookupError(f"{value} is refused")
    return body


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    made = Harness(tmp_path / "db.sqlite")
    yield made
    await made.writer.close()
    made.engine.dispose()


async def _as_one_group(harness: Harness, bodies: list[Callable[[Connection], str]]) -> list[Any]:
    """Run ``bodies`` so that the writer takes them as one group: it is held busy
    by a first write until all of them are queued."""
    release = threading.Event()

    def hold(conn: Connection) -> str:
        release.wait(5)
        return "held"

    held = asyncio.ensure_future(harness.writer.run(hold))
    await asyncio.sleep(0.05)
    futures = [asyncio.ensure_future(harness.writer.run(body)) for body in bodies]
    await asyncio.sleep(0.05)
    release.set()
    await held
    return await asyncio.gather(*futures, return_exceptions=True)


async def test_waiting_writes_share_one_commit(harness: Harness) -> None:
    results = await _as_one_group(harness, [insert(f"v{i}") for i in range(20)])
    assert results == [f"v{i}" for i in range(20)]
    assert harness.rows() == {f"v{i}" for i in range(20)}
    assert harness.commits == 2  # the holding write, then the twenty together
    assert harness.undos == 0


async def test_a_failing_write_is_its_callers_error_alone(harness: Harness) -> None:
    results = await _as_one_group(harness, [insert("a"), failing("bad"), insert("b")])
    assert (results[0], results[2]) == ("a", "b")
    assert isinstance(results[1], LookupError)
    assert harness.rows() == {"a", "b"}  # nothing of the failed write
    # Undone twice: the group without savepoints, then the failing body in its own.
    assert harness.undos == 2


async def test_a_lone_failing_write_runs_once_and_leaves_nothing(harness: Harness) -> None:
    with pytest.raises(LookupError):
        await harness.writer.run(failing("alone"))
    assert harness.rows() == set()
    assert harness.undos == 1
    assert await harness.writer.run(insert("after")) == "after"
    assert harness.rows() == {"after"}


async def test_a_failed_commit_fails_every_caller_and_keeps_nothing(harness: Harness) -> None:
    harness.fail_commit = True
    results = await _as_one_group(harness, [insert("x"), insert("y")])
    assert all(isinstance(r, RuntimeError) for r in results)
    harness.fail_commit = False
    assert harness.rows() == set()
    assert await harness.writer.run(insert("later")) == "later"
