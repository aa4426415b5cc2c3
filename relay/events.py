"""In-process fan-out of live events (task state, presence) to subscribers of one org.

An event is encoded once, when it is published, and each subscriber holds the texts
it has not sent yet, up to a budget in bytes. A fan-out to thousands of devices
publishes three events per task in a burst, which a client reading as fast as it can
still wants whole: a queue of 256 events dropped final states from a fan-out to ~150
devices (issue 21). A subscriber that falls further behind than its budget (a client
that stopped reading) loses its oldest events rather than growing without bound or
slowing the relay, and finds one ``lagged`` marker where they went missing. The
database stays the source of truth: a lost live event never loses state.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from typing import Any

Event = dict[str, Any]
LAGGED = json.dumps({"type": "lagged"})
MIN_BUDGET = 4096


class Subscriber:
    """The encoded events one stream has yet to send, oldest first, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._texts: deque[str] = deque()
        self._size = 0
        self._ready = asyncio.Event()

    def push(self, text: str) -> None:
        dropped = False
        while self._texts and self._size + len(text) + len(LAGGED) > self._budget:
            self._size -= len(self._texts.popleft())
            dropped = True
        if dropped and not (self._texts and self._texts[0] is LAGGED):
            self._texts.appendleft(LAGGED)
            self._size += len(LAGGED)
        self._texts.append(text)
        self._size += len(text)
        self._ready.set()

    def take(self) -> list[str]:
        """Every waiting text, oldest first, leaving none."""
        texts = list(self._texts)
        self._texts.clear()
        self._size = 0
        self._ready.clear()
        return texts

    async def ready(self) -> None:
        """Return once at least one text waits."""
        await self._ready.wait()


class EventBus:
    def __init__(self, budget_bytes: int = 4 * 1024 * 1024) -> None:
        if budget_bytes < MIN_BUDGET:
            raise ValueError(f"a subscriber's budget is at least {MIN_BUDGET} bytes")
        self._budget = budget_bytes
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)

    def subscribe(self, org_id: str) -> Subscriber:
        subscriber = Subscriber(self._budget)
        self._subscribers[org_id].add(subscriber)
        return subscriber

    def unsubscribe(self, org_id: str, subscriber: Subscriber) -> None:
        self._subscribers[org_id].discard(subscriber)
        if not self._subscribers[org_id]:
            del self._subscribers[org_id]

    def publish(self, org_id: str, kind: str, data: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(org_id)
        if not subscribers:
            return
        text = json.dumps({"type": kind, **data})
        for subscriber in subscribers:
            subscriber.push(text)
