"""Fakes at the OS edge, implementing Coact's own interfaces (no mocks of our code)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """A ``coact.shared.clock.Clock`` that the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    def advance(self, delta: timedelta | float) -> None:
        """Move time forward by a timedelta or a number of seconds."""
        self.current += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
