"""Fixtures for the relay tests: fresh PostgreSQL databases, the embedded audit store.

PostgreSQL is expected on 127.0.0.1:5432 with trust auth (``COACT_TEST_PG_URL`` may
point elsewhere). Each test module that asks for ``pg_database_url`` gets its own
``coact_t_<random>`` database, dropped afterwards. When the server cannot be reached
the PostgreSQL tests skip, except under ``CI=true``, where a missing server is a
failure: CI must never go green without having run them (see ``tests/pg.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg import fresh_pg_database

from coact.relay.audit_store import AuditStore


@pytest.fixture(scope="module")
def audit_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStore]:
    """The embedded ClickHouse engine (chDB) with the audit schema, database
    ``coact_audit``, shared by this test module's tests. chDB runs one engine path
    per process at a time, so each module's store is closed before the next module
    opens its own."""
    opened = AuditStore.open(f"chdb://{tmp_path_factory.mktemp('chdb')}?database=coact_audit")
    opened.ensure_schema()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database shared by this test module's tests."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def pg_fresh_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (for what needs an empty schema)."""
    with fresh_pg_database() as url:
        yield url
