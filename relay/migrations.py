"""Versioned schema migrations, applied in order and recorded in ``schema_migrations``.

Each migration is a function over a synchronous SQLAlchemy connection (run through
``AsyncConnection.run_sync``) and must never change once released: a schema change
is a new entry at the end of ``MIGRATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select, text

from coact.relay import schema
from coact.shared.clock import to_rfc3339, utc_now


def _initial(conn: Connection) -> None:
    # Version 1 is the schema module as first released.
    schema.metadata.create_all(conn)


def _refresh_used_from(conn: Connection) -> None:
    # Version 1 creates tables from the *current* schema module, so a database created
    # after this column was added already has it: add it only where it is missing.
    columns = {c["name"] for c in inspect(conn).get_columns("refresh_tokens")}
    if "used_from" not in columns:
        conn.execute(text("ALTER TABLE refresh_tokens ADD COLUMN used_from VARCHAR(64)"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _initial),
    (2, "refresh_tokens.used_from", _refresh_used_from),
]


def _apply(conn: Connection) -> list[int]:
    if not inspect(conn).has_table("schema_migrations"):
        schema.schema_migrations.create(conn)
    done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
    applied = []
    for version, name, migrate in MIGRATIONS:
        if version in done:
            continue
        migrate(conn)
        conn.execute(
            schema.schema_migrations.insert().values(
                version=version, name=name, applied_at=to_rfc3339(utc_now())
            )
        )
        applied.append(version)
    return applied


def migrate(engine: Engine) -> list[int]:
    """Bring the database up to the newest version; return the versions applied (blocking)."""
    with engine.begin() as conn:
        # Several relays (or a relay and a CLI command) may start at once: serialise
        # their migrations, or the losers fail with "table already exists".
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7426001)"))
        elif engine.dialect.name == "sqlite":
            # Take the write lock before reading the schema (waits up to busy_timeout).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return _apply(conn)
