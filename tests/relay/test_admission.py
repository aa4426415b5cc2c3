"""The device-connect gate's pure core, on a hand-moved clock."""

from __future__ import annotations

import math

import pytest
from fakes import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from coact.relay.admission import MAX_RETRY_AFTER_S, WAITING_MEMORY_S, Admission, ConnectGate


def test_a_full_gate_refuses_new_devices_until_a_slot_is_given_back() -> None:
    gate = ConnectGate(2, hold_s=15, clock=FakeClock().monotonic)
    assert gate.admit("a")
    assert gate.admit("b")
    assert not gate.admit("c")
    assert gate.admit("a")  # a device that holds a slot keeps it: its socket follows its token request
    assert gate.in_progress == 2
    gate.release("a", welcomed=True)
    assert gate.admit("c")
    assert not gate.admit("a")


def test_a_slot_never_used_is_taken_back_after_hold_s() -> None:
    clock = FakeClock()
    gate = ConnectGate(1, hold_s=15, clock=clock.monotonic)
    assert gate.admit("a")
    clock.advance(14.9)
    assert not gate.admit("b")
    clock.advance(0.2)
    assert gate.admit("b")
    assert gate.in_progress == 1


def test_renewing_a_slot_moves_its_deadline() -> None:
    clock = FakeClock()
    gate = ConnectGate(2, hold_s=15, clock=clock.monotonic)
    gate.admit("a")
    clock.advance(10)
    gate.admit("b")
    gate.admit("a")  # the socket arrives: held until 25 s now
    clock.advance(10)  # 20 s on: b's slot (until 25 s) and a's both still held
    assert gate.in_progress == 2
    clock.advance(5.1)
    assert gate.in_progress == 0


def test_an_admission_gives_its_slot_back_once() -> None:
    gate = ConnectGate(1, hold_s=15, clock=FakeClock().monotonic)
    assert gate.admit("a")
    first = Admission(gate, "a", renewal=False)
    first.welcomed()
    assert gate.admit("a")  # the device's next connect
    first.abandon()  # the old session ending does not free the new connect's slot
    assert gate.in_progress == 1


def test_a_failed_renewal_leaves_the_slot_to_the_request_that_took_it() -> None:
    gate = ConnectGate(1, hold_s=15, clock=FakeClock().monotonic)
    assert gate.admit("a")
    assert gate.holds("a")
    assert gate.admit("a")  # a forged request with a's id, say
    Admission(gate, "a", renewal=True).abandon()
    assert gate.holds("a")
    Admission(gate, "a", renewal=True).welcomed()  # a's socket, renewing it too, is welcomed
    assert not gate.holds("a")


def test_retry_after_is_the_place_in_line_over_the_completion_rate() -> None:
    clock = FakeClock()
    gate = ConnectGate(10, hold_s=1000, clock=clock.monotonic)
    for i in range(10):
        gate.admit(f"held-{i}")
    # The gate has just filled: no rate measured, so 10 slots a second are guessed.
    assert not gate.admit("first")
    assert gate.rate() == 10
    assert gate.retry_after("first") == 1
    for i in range(99):
        gate.admit(f"waiting-{i}")
    assert gate.retry_after("waiting-98") == 10  # the 100th in line at 10/s
    assert gate.waiting == 100
    # Two seconds on, 8 connects have completed: 4 a second.
    clock.advance(2)
    gate.admit("first")  # asking again (too early) keeps the ticket
    for i in range(8):
        gate.release(f"held-{i}", welcomed=True)
        assert gate.admit(f"waiting-{i}")  # eight of the line got in: they leave it
    assert gate.rate() == 4
    assert gate.retry_after("first") == 1  # still first in line
    assert gate.retry_after("waiting-98") == math.ceil(92 / 4)  # moved up by 8
    assert not gate.admit("late")  # the 93rd in line
    assert gate.retry_after("late") == math.ceil(93 / 4)
    # A slot given back unused (a failed token request) is no completed connect.
    gate.release("held-8", welcomed=False)
    assert gate.rate() == 4
    # Never told to wait more than MAX_RETRY_AFTER_S, however long the line: those
    # further back are spread over its second half.
    for i in range(5000):
        gate.admit(f"crowd-{i}")
    far = [gate.retry_after(f"crowd-{i}") for i in range(1000, 5000)]
    assert min(far) == MAX_RETRY_AFTER_S // 2
    assert max(far) == MAX_RETRY_AFTER_S
    assert len(set(far)) == MAX_RETRY_AFTER_S // 2 + 1
    # A device that stops asking leaves the line after WAITING_MEMORY_S.
    clock.advance(WAITING_MEMORY_S + 1)
    assert not gate.admit("new")
    assert gate.waiting == 1
    assert gate.retry_after("new") == 1


def test_the_rate_is_measured_from_when_the_gate_last_filled_up() -> None:
    clock = FakeClock()
    gate = ConnectGate(1, hold_s=100, clock=clock.monotonic)
    for i in range(20):  # a quiet spell: 20 connects, 0.5 s apart, never full
        gate.admit(f"d-{i}")
        gate.release(f"d-{i}", welcomed=True)
        clock.advance(0.5)
    gate.admit("held")
    assert not gate.admit("x")  # full: the rush begins now
    clock.advance(0.5)
    assert gate.rate() == 1  # too early to measure: one slot a second, guessed
    clock.advance(1.5)
    gate.release("held", welcomed=True)
    assert gate.rate() == 0.5  # one connect in the 2 s since it filled, not the quiet spell's


def test_asking_again_keeps_a_device_in_line_once() -> None:
    gate = ConnectGate(1, hold_s=15, clock=FakeClock().monotonic)
    gate.admit("held")
    for device in ["a", "b", "a", "a"]:
        assert not gate.admit(device)
    assert gate.waiting == 2
    assert gate.retry_after("a") == 1  # first in line, at a guessed 1/s
    assert gate.retry_after("b") == 2


def test_a_device_that_gets_in_leaves_the_backlog() -> None:
    gate = ConnectGate(1, hold_s=15, clock=FakeClock().monotonic)
    gate.admit("a")
    assert not gate.admit("b")
    gate.release("a", welcomed=True)
    assert gate.admit("b")
    assert gate.waiting == 0


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from(["admit", "release", "wait"])), max_size=80))
def test_never_more_than_limit_slots(steps: list[tuple[str, str]]) -> None:
    clock = FakeClock()
    gate = ConnectGate(3, hold_s=15, clock=clock.monotonic)
    for device, step in steps:
        if step == "admit":
            gate.admit(device)
        elif step == "release":
            gate.release(device, welcomed=True)
        else:
            clock.advance(4)
        assert gate.in_progress <= 3
        assert 1 <= gate.retry_after(device) <= MAX_RETRY_AFTER_S


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ConnectGate(0, hold_s=15, clock=FakeClock().monotonic)
    with pytest.raises(ValueError, match="must be positive"):
        ConnectGate(1, hold_s=0, clock=FakeClock().monotonic)
