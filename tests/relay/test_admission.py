"""The device-connect gate's pure core, on a hand-moved clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coact.relay.admission import MAX_RETRY_AFTER_S, WAITING_MEMORY_S, Admission, ConnectGate


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_gate_refuses_new_devices_until_a_slot_is_given_back() -> None:
    gate = ConnectGate(2, hold_s=15, clock=Ticks())
    assert gate.admit("a")
    assert gate.admit("b")
    assert not gate.admit("c")
    assert gate.admit("a")  # a device that holds a slot keeps it: its socket follows its token request
    assert gate.in_progress == 2
    gate.release("a", welcomed=True)
    assert gate.admit("c")
    assert not gate.admit("a")


def test_a_slot_never_used_is_taken_back_after_hold_s() -> None:
    clock = Ticks()
    gate = ConnectGate(1, hold_s=15, clock=clock)
    assert gate.admit("a")
    clock.now += 14.9
    assert not gate.admit("b")
    clock.now += 0.2
    assert gate.admit("b")
    assert gate.in_progress == 1


def test_renewing_a_slot_moves_its_deadline() -> None:
    clock = Ticks()
    gate = ConnectGate(2, hold_s=15, clock=clock)
    gate.admit("a")
    clock.now += 10
    gate.admit("b")
    gate.admit("a")  # the socket arrives: held until 1025 now
    clock.now += 10  # 1020: b's slot (until 1025) and a's both still held
    assert gate.in_progress == 2
    clock.now += 5.1
    assert gate.in_progress == 0


def test_an_admission_gives_its_slot_back_once() -> None:
    gate = ConnectGate(1, hold_s=15, clock=Ticks())
    assert gate.admit("a")
    first = Admission(gate, "a")
    first.welcomed()
    assert gate.admit("a")  # the device's next connect
    first.abandon()  # the old session ending does not free the new connect's slot
    assert gate.in_progress == 1


def test_retry_after_is_the_place_in_line_times_the_connect_time_over_the_slots() -> None:
    clock = Ticks()
    gate = ConnectGate(10, hold_s=15, clock=clock)
    for i in range(10):
        gate.admit(f"held-{i}")
    # No connect measured yet: a connect is guessed at 1 s, so 10 are served a second.
    assert not gate.admit("first")
    assert gate.retry_after() == 1
    for i in range(99):
        gate.admit(f"waiting-{i}")
    assert gate.retry_after() == 10  # the 100th in line: 100 * 1 s / 10 slots
    # Connects now take 3 s from token request to welcome.
    clock.now += 3
    for i in range(10):
        gate.release(f"held-{i}", welcomed=True)
    assert gate.connect_s == pytest.approx(1 + (1 - 0.8**10) * 2)
    for i in range(10):
        assert gate.admit(f"waiting-{i}")  # ten of the line got in: they leave it
    assert not gate.admit("late")  # the 91st in line now
    assert gate.retry_after() == math.ceil(91 * gate.connect_s / 10)
    # The line is capped: never told to wait more than a minute.
    for i in range(5000):
        gate.admit(f"crowd-{i}")
    assert gate.retry_after() == MAX_RETRY_AFTER_S
    # Turned-away devices are forgotten after WAITING_MEMORY_S.
    clock.now += WAITING_MEMORY_S + 1
    assert gate.retry_after() == 1


def test_asking_again_moves_a_device_to_the_end_of_the_line_not_into_it_twice() -> None:
    gate = ConnectGate(1, hold_s=15, clock=Ticks())
    gate.admit("held")
    for device in ["a", "b", "a", "a"]:
        assert not gate.admit(device)
    assert gate.retry_after() == 2  # a and b in line


def test_a_device_that_gets_in_leaves_the_backlog() -> None:
    gate = ConnectGate(1, hold_s=15, clock=Ticks())
    gate.admit("a")
    assert not gate.admit("b")
    gate.release("a", welcomed=True)
    assert gate.admit("b")
    assert gate.retry_after() == 1


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from(["admit", "release", "wait"])), max_size=80))
def test_never_more_than_limit_slots(steps: list[tuple[str, str]]) -> None:
    clock = Ticks()
    gate = ConnectGate(3, hold_s=15, clock=clock)
    for device, step in steps:
        if step == "admit":
            gate.admit(device)
        elif step == "release":
            gate.release(device, welcomed=True)
        else:
            clock.now += 4
        assert gate.in_progress <= 3
        assert 1 <= gate.retry_after() <= MAX_RETRY_AFTER_S


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ConnectGate(0, hold_s=15, clock=Ticks())
    with pytest.raises(ValueError, match="must be positive"):
        ConnectGate(1, hold_s=0, clock=Ticks())
