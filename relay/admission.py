"""Admission of device connects: a bounded number served at once, the rest told when to come back.

A device connects in two requests: a signed token request, then the agent WebSocket,
whose handshake ends with the relay's welcome. Together they cost the relay ~7 ms of
CPU. When a relay restarts, its whole fleet asks at once, and served all at once,
every connect progresses a little at a time and many do not finish before their
agent gives up (15 s), so the relay's work for them is wasted and they come back for
more. Measured (docs/performance.md, item 6): 12,000 agents at once took 261 s with
32,954 failed attempts and 338 sessions lost; through this gate, 200-205 s with none.

:class:`ConnectGate` is the pure core (no I/O, injected clock). A device holds a
*slot* from its token request until its session is welcomed, or for ``hold_s`` if it
never comes; at most ``limit`` devices hold one. A device that finds none is refused
(HTTP 503 with ``Retry-After``), cheaply, before any signature is checked.

``Retry-After`` is an appointment. A device turned away takes a ticket, and keeps it
while it waits; its place in line is its ticket less the tickets that have left the
line (got in, or were forgotten), and its appointment is that place divided by the
rate at which connects have been completing since the gate filled up. So the fleet
comes back at about the rate the relay serves it, in the order it was turned away.
Appointments are at most ``MAX_RETRY_AFTER_S`` away, and those further back are
spread over the second half of that: an estimate made early in a rush is low (the
relay is busy turning thousands away, ~0.6 ms each, against ~7 ms for a connect), and
a device back too early is told again, from its place, which has moved up meanwhile,
instead of the relay idling while devices keep appointments made too far out. In the
first second of a rush no connect has completed yet; the guess then is that every
slot turns over once a second.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Callable

Monotonic = Callable[[], float]

MAX_RETRY_AFTER_S = 60
# A device turned away keeps its ticket this long after it last asked; at most
# MAX_WAITING are kept.
WAITING_MEMORY_S = 2.0 * MAX_RETRY_AFTER_S
MAX_WAITING = 100_000
RATE_WINDOW_S = 10.0  # the completion rate is measured over at most this long
MIN_RATE_SPAN_S = 1.0  # and over at least this long; before that, it is guessed


class ConnectGate:
    """At most ``limit`` device connects in progress (see the module docstring)."""

    def __init__(self, limit: int, hold_s: float, clock: Monotonic) -> None:
        if limit < 1 or hold_s <= 0:
            raise ValueError("limit and hold_s must be positive")
        self.limit = limit
        self.hold_s = hold_s
        self._clock = clock
        self._slots: OrderedDict[str, float] = OrderedDict()  # device -> deadline, oldest first
        # device -> (ticket, when it last asked), in ticket order
        self._waiting: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._tickets = 0  # handed out
        self._left = 0  # of those, no longer in line
        self._completed: deque[float] = deque()  # when connects were welcomed, the last RATE_WINDOW_S
        self._full_since = -math.inf  # when the gate last filled up after a quiet spell
        self._last_refusal = -math.inf

    @property
    def in_progress(self) -> int:
        self._expire(self._clock())
        return len(self._slots)

    def holds(self, device_id: str) -> bool:
        """Whether the device holds a slot now."""
        self._expire(self._clock())
        return device_id in self._slots

    @property
    def waiting(self) -> int:
        """Devices in line."""
        return len(self._waiting)

    def admit(self, device_id: str) -> bool:
        """Give ``device_id`` a slot (or renew the one it holds); False if none is free:
        the device then waits in line (see :meth:`retry_after`)."""
        now = self._clock()
        self._expire(now)
        if device_id not in self._slots and len(self._slots) >= self.limit:
            if now - self._last_refusal > RATE_WINDOW_S:
                self._full_since = now
            self._last_refusal = now
            self._forget_stale(now)
            held = self._waiting.get(device_id)
            if held is None:
                held = (self._tickets, now)
                self._tickets += 1
                if len(self._waiting) >= MAX_WAITING:
                    self._waiting.popitem(last=False)
                    self._left += 1
            self._waiting[device_id] = (held[0], now)
            return False
        self._slots.pop(device_id, None)
        self._slots[device_id] = now + self.hold_s
        if self._waiting.pop(device_id, None) is not None:
            self._left += 1
        return True

    def release(self, device_id: str, *, welcomed: bool) -> None:
        """Free the device's slot; ``welcomed`` counts a completed connect."""
        if self._slots.pop(device_id, None) is not None and welcomed:
            now = self._clock()
            self._completed.append(now)
            while self._completed[0] <= now - RATE_WINDOW_S:
                self._completed.popleft()

    def rate(self) -> float:
        """Connects completed per second since the gate filled up (over at most
        RATE_WINDOW_S); before a second of that, ``limit`` per second (a guess)."""
        now = self._clock()
        span = min(RATE_WINDOW_S, now - self._full_since)
        done = len(self._completed) - bisect.bisect_left(self._completed, now - span)
        if span < MIN_RATE_SPAN_S or done == 0:
            return float(self.limit)
        return done / span

    def retry_after(self, device_id: str) -> int:
        """Whole seconds a device turned away should wait: its place in line over the
        completion rate, between 1 and ``MAX_RETRY_AFTER_S``."""
        held = self._waiting.get(device_id)
        ticket = 0 if held is None else held[0]
        wait = math.ceil(max(1, ticket - self._left + 1) / self.rate())
        if wait > MAX_RETRY_AFTER_S:
            # Further back than that: spread over the second half of it by ticket, to
            # be told again then, not all at the limit together.
            half = MAX_RETRY_AFTER_S // 2
            return MAX_RETRY_AFTER_S - half + ticket % (half + 1)
        return max(1, wait)

    def _forget_stale(self, now: float) -> None:
        # In ticket order, so a stale device behind a fresh one stays until that one
        # goes: the line may look a little longer than it is, never shorter.
        while self._waiting and next(iter(self._waiting.values()))[1] <= now - WAITING_MEMORY_S:
            self._waiting.popitem(last=False)
            self._left += 1

    def _expire(self, now: float) -> None:
        # Deadlines grow with insertion order (a renewal re-inserts its slot at the end).
        while self._slots and next(iter(self._slots.values())) <= now:
            self._slots.popitem(last=False)


class Admission:
    """One admitted connect's slot, given back once: at its welcome, or when it fails
    first. A request that found its device already holding a slot (``renewal``: the
    socket after its token request, or an earlier answer lost) does not give it back on
    failure: the slot is the earlier request's, and a request anyone can forge with the
    device's id must not take it away."""

    def __init__(self, gate: ConnectGate, device_id: str, *, renewal: bool) -> None:
        self._gate = gate
        self._device_id = device_id
        self._renewal = renewal
        self._open = True

    def welcomed(self) -> None:
        self._close(welcomed=True)

    def abandon(self) -> None:
        if not self._renewal:
            self._close(welcomed=False)

    def _close(self, *, welcomed: bool) -> None:
        if self._open:
            self._open = False
            self._gate.release(self._device_id, welcomed=welcomed)
