"""Fixtures shared by the integration tests: real relays and agents on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Agent, Api, Relay


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One embedded-default relay (SQLite + chDB) per test module; tests isolate by org."""
    server = Relay(tmp_path_factory.mktemp("relay") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(relay: Relay) -> tuple[Api, dict[str, str]]:
    return relay.new_admin()


@pytest.fixture
def agent_factory(relay: Relay, tmp_path: Path) -> Iterator[object]:
    started: list[Agent] = []

    def make(name: str = "agent", admin_api: Api | None = None, tags: list[str] | None = None) -> tuple[Agent, str, Path]:
        api = admin_api or relay.new_admin()[0]
        sandbox = tmp_path / f"{name}-sandbox"
        agent, device_id = Agent.enroll(relay, api, tmp_path / name, sandbox, tags)
        started.append(agent)
        return agent, device_id, sandbox

    yield make
    for agent in started:
        agent.stop()
