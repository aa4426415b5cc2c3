"""``coact.relay.prepared.Prepared`` on SQLite and PostgreSQL: what it writes reads back
through SQLAlchemy as if ``conn.execute`` had written it, inside the caller's
transaction, with SQLAlchemy's errors."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import JSON

from coact.relay.prepared import Prepared
from coact.relay.storage import open_engine

metadata = MetaData()
things = Table(
    "prepared_things",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("count", Integer, nullable=False),
    Column("body", JSON),
)

INSERT = Prepared(insert(things))
STATE = Prepared(select(things.c.id, things.c.status, things.c.count).where(things.c.id == bindparam("b_id")))
SET = Prepared(update(things).where(things.c.id == bindparam("b_id")), set_from_params=True)
# A literal bind (the status) the caller never passes.
CLOSE_OPEN = Prepared(update(things).where(things.c.id == bindparam("b_id"), things.c.status == "open"),
                      set_from_params=True)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_database_url")
    opened = open_engine(url)
    metadata.create_all(opened)
    try:
        yield opened
    finally:
        metadata.drop_all(opened)
        opened.dispose()


def new_id() -> str:
    return f"t_{secrets.token_hex(8)}"


def read(engine: Engine, thing_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(things).where(things.c.id == thing_id)).first()


def test_rows_written_read_back_through_sqlalchemy_json_included(engine: Engine) -> None:
    body = {"text": "ünïcode ✓", "big": 2**70, "nested": [1, 2.5, None, {"k": True}]}
    a, b, c = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        INSERT.run(conn, {"id": a, "status": "open", "count": 1, "body": body})
        INSERT.run_many(conn, [{"id": b, "status": "open", "count": 2, "body": None},
                               {"id": c, "status": "done", "count": 3, "body": []}])
    assert read(engine, a).body == body
    assert read(engine, b).body is None  # None is SQL NULL, not the JSON text null
    with engine.connect() as conn:
        assert conn.execute(select(things.c.id).where(things.c.body.is_(None), things.c.id == b)).first() is not None
    assert read(engine, c).body == []


def test_first_gives_named_rows_or_none(engine: Engine) -> None:
    thing = new_id()
    with engine.begin() as conn:
        INSERT.run(conn, {"id": thing, "status": "open", "count": 7, "body": None})
        row = STATE.first(conn, {"b_id": thing})
        assert (row.id, row.status, row.count) == (thing, "open", 7)
        assert STATE.first(conn, {"b_id": new_id()}) is None


def test_set_columns_come_from_the_params_and_literal_binds_hold(engine: Engine) -> None:
    thing = new_id()
    with engine.begin() as conn:
        INSERT.run(conn, {"id": thing, "status": "open", "count": 0, "body": None})
        assert SET.run(conn, {"b_id": thing, "count": 5}) == 1
        assert SET.run(conn, {"b_id": thing, "body": {"v": 1}, "count": 6}) == 1  # another shape
        assert CLOSE_OPEN.run(conn, {"b_id": thing, "status": "closed"}) == 1
        assert CLOSE_OPEN.run(conn, {"b_id": thing, "status": "closed"}) == 0  # no longer open
    row = read(engine, thing)
    assert (row.status, row.count, row.body) == ("closed", 6, {"v": 1})


def test_driver_errors_are_sqlalchemys_and_a_savepoint_contains_them(engine: Engine) -> None:
    thing = new_id()
    with engine.begin() as conn:
        INSERT.run(conn, {"id": thing, "status": "open", "count": 1, "body": None})
        with pytest.raises(IntegrityError), conn.begin_nested():  # the savepoint rolls back
            INSERT.run(conn, {"id": thing, "status": "dup", "count": 2, "body": None})
        SET.run(conn, {"b_id": thing, "count": 3})  # the transaction goes on
    assert (read(engine, thing).status, read(engine, thing).count) == ("open", 3)


def test_work_rolled_back_with_the_callers_transaction(engine: Engine) -> None:
    thing = new_id()

    def insert_then_fail() -> None:
        with engine.begin() as conn:
            INSERT.run(conn, {"id": thing, "status": "open", "count": 1, "body": None})
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert read(engine, thing) is None
