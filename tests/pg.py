"""Fresh PostgreSQL databases for tests (for the storage suite and real relays alike).

PostgreSQL is expected on 127.0.0.1:5432 with trust auth (``COACT_TEST_PG_URL`` may
point elsewhere). When the server cannot be reached the PostgreSQL tests skip, except
under ``CI=true``, where a missing server is a failure: CI must never go green
without having run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from harness import PG_URL, Relay


def _with_user_and_db(url: str, user: str, database: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", f"/{database}", "", ""))


def _admin_connection() -> tuple[psycopg.Connection[Any], str]:
    """Connect (autocommit) to the maintenance database as ``postgres``, else as ``root``."""
    base = PG_URL.replace("postgresql+psycopg://", "postgresql://", 1).replace("postgresql+asyncpg://", "postgresql://", 1)
    errors = []
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(_with_user_and_db(base, user, urlsplit(base).path.lstrip("/")),
                                   connect_timeout=5, autocommit=True)
        except psycopg.Error as exc:
            errors.append(f"{user}: {exc!r}")
            continue
        return conn, user
    raise ConnectionError("; ".join(errors))


def _create_database(name: str) -> str:
    conn, user = _admin_connection()
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return user


def _drop_database(name: str) -> None:
    conn, _user = _admin_connection()
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create a ``coact_t_<random>`` database; yield its SQLAlchemy URL; drop it."""
    name = f"coact_t_{secrets.token_hex(6)}"
    try:
        user = _create_database(name)
    except ConnectionError as exc:
        reason = f"PostgreSQL at {PG_URL} is unreachable ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    try:
        yield _with_user_and_db(PG_URL, user, name)
    finally:
        _drop_database(name)


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@contextmanager
def relay_on(backend: str, data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[Relay]:
    """A started relay process whose state database is SQLite or a fresh PostgreSQL one.

    Use it in a module fixture parametrized with :data:`BACKENDS`, so a module's tests
    run against real relays on both databases.
    """
    if backend == "sqlite":
        server = Relay(data_dir, env=env)
        server.start()
        try:
            yield server
        finally:
            server.stop()
        return
    with fresh_pg_database() as url:
        server = Relay(data_dir, database_url=url, env=env)
        server.start()
        try:
            yield server
        finally:
            server.stop()
