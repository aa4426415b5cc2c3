"""Adding up the progress of a simulator's worker processes (``coact sim --processes``)."""

from __future__ import annotations

from coact.agent.sim import MAX_CAUSES, merge_progress


def _part(**values: object) -> dict[str, object]:
    return {"elapsed_s": 1.0, "connected": 0, "reconnects": 0, "last_errors": [], "reconnect_causes": {},
            **values}


def test_counts_add_up_and_the_slowest_time_wins() -> None:
    merged = merge_progress([_part(connected=3, elapsed_s=2.5), _part(connected=4, elapsed_s=1.5)])
    assert merged["connected"] == 7
    assert merged["elapsed_s"] == 2.5


def test_reconnect_causes_are_added_up_by_cause_most_frequent_first() -> None:
    merged = merge_progress([
        _part(reconnects=3, reconnect_causes={"connection closed: 1011": 2, "timed out": 1}),
        _part(reconnects=2, reconnect_causes={"timed out": 2}),
    ])
    assert merged["reconnects"] == 5
    assert merged["reconnect_causes"] == {"timed out": 3, "connection closed: 1011": 2}
    assert list(merged["reconnect_causes"]) == ["timed out", "connection closed: 1011"]


def test_only_the_most_frequent_causes_are_kept() -> None:
    many = {f"cause {i}": i + 1 for i in range(MAX_CAUSES + 3)}
    merged = merge_progress([_part(reconnect_causes=many), _part()])
    assert len(merged["reconnect_causes"]) == MAX_CAUSES
    assert "cause 0" not in merged["reconnect_causes"]
