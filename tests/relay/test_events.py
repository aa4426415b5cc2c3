"""The in-process live event fan-out."""

from __future__ import annotations

import json

import pytest

from coact.relay.events import LAGGED, EventBus


def _decoded(texts: list[str]) -> list[dict[str, object]]:
    return [json.loads(text) for text in texts]


def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus(budget_bytes=4096)
    mine = bus.subscribe("org_a")
    theirs = bus.subscribe("org_b")
    padding = "x" * 1000  # four of these events are more than the budget
    for n in range(6):
        bus.publish("org_a", "task", {"n": n, "pad": padding})
    received = _decoded(mine.take())
    assert received[0] == {"type": "lagged"}  # where the lost ones were, before what is left
    assert received[-1] == {"type": "task", "n": 5, "pad": padding}
    assert [event["n"] for event in received[1:]] == [3, 4, 5]  # the newest, in order
    assert theirs.take() == []  # another org's subscriber sees nothing
    bus.unsubscribe("org_a", mine)
    bus.publish("org_a", "task", {"n": 6})
    assert mine.take() == []


def test_a_subscriber_keeps_a_whole_fan_out_burst_within_its_budget() -> None:
    """Three events per task for a fan-out to 5,000 devices fit the default budget:
    the stream loses nothing that a client reading as fast as it can still wants."""
    bus = EventBus()
    mine = bus.subscribe("org_a")
    for n in range(5000):
        for status in ("dispatched", "running", "succeeded"):
            bus.publish("org_a", "task", {"task_id": f"tsk_{n:024d}", "device_id": f"dev_{n:024d}", "status": status})
    received = mine.take()
    assert LAGGED not in received
    assert len(received) == 15_000
    assert json.loads(received[-1])["status"] == "succeeded"


def test_one_marker_however_much_is_lost() -> None:
    bus = EventBus(budget_bytes=4096)
    mine = bus.subscribe("org_a")
    for n in range(1000):
        bus.publish("org_a", "task", {"n": n})
    received = mine.take()
    assert received.count(LAGGED) == 1
    assert received[0] == LAGGED
    assert sum(len(text) for text in received) <= 4096


def test_the_budget_has_a_floor() -> None:
    with pytest.raises(ValueError, match="at least 4096"):
        EventBus(budget_bytes=100)
