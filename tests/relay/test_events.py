"""The in-process live event fan-out."""

from __future__ import annotations

from coact.relay.events import EventBus


def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus(queue_size=3)
    mine = bus.subscribe("org_a")
    theirs = bus.subscribe("org_b")
    for n in range(5):
        bus.publish("org_a", "task", {"n": n})
    received = [mine.get_nowait() for _ in range(mine.qsize())]
    assert received[-1] == {"type": "task", "n": 4}
    assert {"type": "lagged"} in received
    assert len(received) == 3
    assert theirs.empty()  # another org's subscriber sees nothing
    bus.unsubscribe("org_a", mine)
    bus.publish("org_a", "task", {"n": 5})
    assert mine.empty()
