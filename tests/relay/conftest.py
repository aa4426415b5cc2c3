"""Fixtures for the relay tests: fresh PostgreSQL databases.

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
