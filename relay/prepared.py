"""Statements compiled once per database dialect and run on the driver's own cursor.

``conn.execute(statement, params)`` on a prebuilt SQLAlchemy Core statement still
costs 15-20 µs of Python per call before the driver sees it: the compiled-cache
lookup, an execution context, parameter processing, a result wrapper (callgrind:
about nine tenths of the relay's instructions per statement on SQLite). The
statements every task, heartbeat and audit batch makes are a dozen fixed shapes,
so :class:`Prepared` does that work once per dialect and shape instead: it keeps the
SQL text, the parameter order, the values of literal binds and which parameters are
JSON, and runs the statement on the DB-API cursor of the SQLAlchemy connection it is
given, inside that connection's transaction (or savepoint).

What it gives up, deliberately: only plain values go in (str, int, float, bool,
None, and ``dict``/``list`` for JSON columns, written with the relay's JSON codec;
``None`` is SQL ``NULL``), and rows come back as named tuples of what the driver
returned, without SQLAlchemy's result processing, so only columns that need none
(text, numbers, booleans used as truth values) belong in a Prepared ``SELECT``.
Driver errors are raised as SQLAlchemy's (``IntegrityError`` and so on), as
``conn.execute`` would raise them.

An ``UPDATE`` made with ``set_from_params=True`` takes its SET columns from the keys
of the parameters that are not named ``b_*`` (see :mod:`coact.relay.queries`); each
set of columns is compiled once.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import JSON, bindparam
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

Params = Mapping[str, Any]


def column_json(value: Any) -> str:
    """The relay's JSON columns are written with orjson, several times faster than the
    standard library (a tenth of the writer's instructions per task); what it declines
    (ints beyond 64 bits, keys that are not strings) takes the standard library's path.
    Values here never hold NaN or Infinity, which orjson would write as null: the API
    and the agent wire refuse them. Reads keep the standard library: orjson reads an
    int beyond 64 bits as a float."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None  # parameter order for ``?`` styles; None for named styles
    defaults: Mapping[str, Any]  # literal binds (``status == "active"``): their values
    json: frozenset[str]  # parameters bound to JSON columns


class Prepared:
    """A Core statement run without SQLAlchemy's per-call machinery (see the module docstring)."""

    def __init__(self, statement: ClauseElement, *, set_from_params: bool = False) -> None:
        self.statement = statement
        self._set_from_params = set_from_params
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}  # by dialect and parameter names
        self._row_types: dict[tuple[str, ...], Any] = {}

    def run(self, conn: Connection, params: Params) -> int:
        """Execute once; the driver's row count."""
        return int(self._execute(conn, params).rowcount)

    def first(self, conn: Connection, params: Params) -> Any:
        """Execute once; the first row as a named tuple, or None."""
        cursor = self._execute(conn, params)
        row = cursor.fetchone()
        if row is None:
            return None
        names = tuple(column[0] for column in cursor.description)
        row_type = self._row_types.get(names)
        if row_type is None:
            row_type = self._row_types[names] = namedtuple("Row", names)
        return row_type(*row)

    def run_many(self, conn: Connection, rows: Sequence[Params]) -> None:
        """Execute once per row (rows with the same keys), in one driver call."""
        if not rows:
            return
        compiled = self._for(conn.dialect, rows[0])
        _call_driver(conn, "executemany", compiled.sql, [self._values(compiled, row) for row in rows])

    def _execute(self, conn: Connection, params: Params) -> Any:
        compiled = self._for(conn.dialect, params)
        return _call_driver(conn, "execute", compiled.sql, self._values(compiled, params))

    @staticmethod
    def _values(compiled: _Compiled, params: Params) -> Any:
        merged = {**compiled.defaults, **params} if compiled.defaults else dict(params)
        for name in compiled.json:
            value = merged[name]
            if value is not None:
                merged[name] = column_json(value)
        if compiled.positional is None:
            return merged
        return [merged[name] for name in compiled.positional]

    def _for(self, dialect: Dialect, params: Params) -> _Compiled:
        # Keyed by the parameters' names as given: callers pass a handful of shapes.
        key = (dialect.name, tuple(params) if self._set_from_params else ())
        compiled = self._compiled.get(key)
        if compiled is None:
            set_columns = tuple(name for name in params if not name.startswith("b_")) if self._set_from_params else ()
            compiled = self._compiled[key] = _compile(self.statement, dialect, set_columns)
        return compiled


def _call_driver(conn: Connection, method: Literal["execute", "executemany"], sql: str, values: Any) -> Any:
    """``cursor.execute`` or ``executemany`` on ``conn``'s DB-API connection; the cursor,
    or the driver's error as SQLAlchemy's."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        getattr(cursor, method)(sql, values)
    except driver_error as exc:
        raise DBAPIError.instance(sql, values, exc, driver_error) from exc
    return cursor


def _compile(statement: ClauseElement, dialect: Dialect, set_columns: tuple[str, ...]) -> _Compiled:
    if set_columns:
        statement = statement.values({name: bindparam(name) for name in set_columns})  # type: ignore[attr-defined]
    compiled = statement.compile(dialect=dialect)
    binds = compiled.bind_names  # type: ignore[attr-defined]
    return _Compiled(
        sql=compiled.string,
        positional=tuple(compiled.positiontup or ()) if compiled.positional else None,  # type: ignore[attr-defined]
        defaults={name: bind.value for bind, name in binds.items() if not bind.required},
        json=frozenset(name for bind, name in binds.items() if isinstance(bind.type, JSON)),
    )
