"""Admission of device connects: a bounded number served at once, the rest told when to come back.

A device connects in two requests: a signed token request, then the agent WebSocket,
whose handshake ends with the relay's welcome. Together they cost the relay ~7 ms of
CPU. When a relay restarts, its whole fleet asks at once, and served all at once,
every connect progresses a little at a time and none finishes before its agent gives
up (measured: 12,000 simultaneous token requests, 140 answered within the agent's
15 s timeout, the relay's work for the other 11,860 wasted; docs/performance.md).

:class:`ConnectGate` is the pure core (no I/O, injected clock). A device holds a
*slot* from its token request until its session is welcomed, or for ``hold_s`` if it
never comes; at most ``limit`` devices hold one. A device that finds none is refused
(HTTP 503 with ``Retry-After``), cheaply, before any signature is checked.

``Retry-After`` is an appointment: a refused device's place in the line of devices
turned away recently, times how long a connect takes (a moving average, from the
token request to the welcome), divided by the connects served at once. The first in
line are told to come back in a second, the last of a large fleet up to a minute
later, so the fleet comes back at the rate the relay serves it; the agent waits
between that and twice it (or its own back-off, if longer), so devices given the
same whole second do not arrive together.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

Monotonic = Callable[[], float]

MAX_RETRY_AFTER_S = 60
# A turned-away device stays in the line this long (it may have been told to wait up
# to MAX_RETRY_AFTER_S, and then up to twice that); at most MAX_WAITING are kept.
WAITING_MEMORY_S = 2.0 * MAX_RETRY_AFTER_S
MAX_WAITING = 100_000
FIRST_CONNECT_GUESS_S = 1.0  # how long a connect takes, until one has been measured
SMOOTHING = 0.2  # weight of each new connect time in the moving average


class ConnectGate:
    """At most ``limit`` device connects in progress (see the module docstring)."""

    def __init__(self, limit: int, hold_s: float, clock: Monotonic) -> None:
        if limit < 1 or hold_s <= 0:
            raise ValueError("limit and hold_s must be positive")
        self.limit = limit
        self.hold_s = hold_s
        self._clock = clock
        # device -> (deadline, admitted at), oldest deadline first
        self._slots: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._waiting: OrderedDict[str, float] = OrderedDict()  # device -> when last turned away, in line order
        self.connect_s = FIRST_CONNECT_GUESS_S  # moving average, token request to welcome

    @property
    def in_progress(self) -> int:
        self._expire(self._clock())
        return len(self._slots)

    def admit(self, device_id: str) -> bool:
        """Give ``device_id`` a slot (or renew the one it holds); False if none is free:
        the device then goes to the end of the line."""
        now = self._clock()
        self._expire(now)
        held = self._slots.pop(device_id, None)
        if held is None and len(self._slots) >= self.limit:
            self._waiting.pop(device_id, None)
            self._waiting[device_id] = now
            if len(self._waiting) > MAX_WAITING:
                self._waiting.popitem(last=False)
            return False
        # A renewal (the socket after its token request) keeps the time of admission.
        self._slots[device_id] = (now + self.hold_s, now if held is None else held[1])
        self._waiting.pop(device_id, None)
        return True

    def release(self, device_id: str, *, welcomed: bool) -> None:
        """Free the device's slot; ``welcomed`` adds its connect time to the average."""
        held = self._slots.pop(device_id, None)
        if held is not None and welcomed:
            self.connect_s += SMOOTHING * (self._clock() - held[1] - self.connect_s)

    def retry_after(self) -> int:
        """Whole seconds the device last turned away should wait (module docstring),
        between 1 and ``MAX_RETRY_AFTER_S``."""
        now = self._clock()
        while self._waiting and next(iter(self._waiting.values())) <= now - WAITING_MEMORY_S:
            self._waiting.popitem(last=False)
        place = len(self._waiting)
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(place * self.connect_s / self.limit)))

    def _expire(self, now: float) -> None:
        # Deadlines grow with insertion order (a renewal re-inserts its slot at the end).
        while self._slots and next(iter(self._slots.values()))[0] <= now:
            self._slots.popitem(last=False)

class Admission:
    """One admitted connect's slot, given back once: at its welcome, or when it fails first."""

    def __init__(self, gate: ConnectGate, device_id: str) -> None:
        self._gate = gate
        self._device_id = device_id
        self._open = True

    def welcomed(self) -> None:
        self._close(welcomed=True)

    def abandon(self) -> None:
        self._close(welcomed=False)

    def _close(self, *, welcomed: bool) -> None:
        if self._open:
            self._open = False
            self._gate.release(self._device_id, welcomed=welcomed)
