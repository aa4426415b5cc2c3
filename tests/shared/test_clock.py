"""The one text form of time on the wire: RFC 3339, UTC, microseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coact.shared.clock import from_rfc3339, to_rfc3339

_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_moments = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets)


@given(_moments)
def test_utc_with_microseconds_and_z(moment: datetime) -> None:
    text = to_rfc3339(moment)
    assert text == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert from_rfc3339(text) == moment


def test_known_values() -> None:
    assert to_rfc3339(datetime(2026, 11, 26, 5, 31, 18, 123456, tzinfo=UTC)) == "2026-11-26T05:31:18.123456Z"
    assert to_rfc3339(datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))) == "2026-01-01T00:00:00.000000Z"
    assert to_rfc3339(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"  # four-digit years


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_rfc3339(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="offset"):
        from_rfc3339("2026-01-01T00:00:00")
