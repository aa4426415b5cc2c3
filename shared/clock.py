"""Time: one RFC 3339 UTC text form on the wire, and an injectable clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where code that schedules, expires or backs off gets the time (tests inject one)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_rfc3339(moment: datetime) -> str:
    """``2026-11-26T05:31:18.123456Z``: UTC, microseconds, ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Coact only handles aware UTC times")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is several times faster than strftime, and this runs a few times
    # per task; with UTC it always ends in "+00:00".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def from_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset; naive times are refused."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)
