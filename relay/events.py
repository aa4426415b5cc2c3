"""In-process fan-out of live events (task state, presence) to subscribers of one org.

Subscribers get a bounded queue; one that falls behind loses its oldest events rather
than slowing the relay, and is told so by a ``lagged`` marker. The database stays the
source of truth: a lost live event never loses state.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

Event = dict[str, Any]


class EventBus:
    def __init__(self, queue_size: int = 256) -> None:
        if queue_size < 2:
            raise ValueError("a subscriber queue holds at least the lag marker and one event")
        self._queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

    def subscribe(self, org_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers[org_id].add(queue)
        return queue

    def unsubscribe(self, org_id: str, queue: asyncio.Queue[Event]) -> None:
        self._subscribers[org_id].discard(queue)
        if not self._subscribers[org_id]:
            del self._subscribers[org_id]

    def publish(self, org_id: str, kind: str, data: dict[str, Any]) -> None:
        event = {"type": kind, **data}
        for queue in self._subscribers.get(org_id, ()):
            if queue.full():
                # Make room for the marker and the new event: the oldest two go.
                queue.get_nowait()
                queue.get_nowait()
                queue.put_nowait({"type": "lagged"})
            queue.put_nowait(event)
