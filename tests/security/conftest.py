"""Every security test that uses the shared ``relay`` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Relay
from pg import BACKENDS, relay_on


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_on(request.param, tmp_path_factory.mktemp(f"relay-{request.param}") / "data") as server:
        yield server
