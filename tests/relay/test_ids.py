"""Identifiers order by creation, also within one millisecond."""

from __future__ import annotations

import base64
import threading
import time

from coact.relay.ids import _spell, new_id


def test_ids_made_back_to_back_are_strictly_increasing() -> None:
    ids = [new_id("usr") for _ in range(10_000)]  # thousands per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == len("usr_") + 26 for i in ids)


def test_ids_from_many_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_id("tsk") for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in made)


def test_ids_spell_time_then_randomness_in_crockford_base32() -> None:
    """The spelling must stay the same as ids already stored (they sort together):
    checked against the standard library's base32 of the same 130 bits."""
    before = time.time_ns() // 1_000_000
    made = new_id("tsk").removeprefix("tsk_")
    after = time.time_ns() // 1_000_000
    crockford = str.maketrans("0123456789abcdefghjkmnpqrstvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    bits = int.from_bytes(base64.b32decode(made.translate(crockford) + "AAAAAA"), "big") >> 30
    assert before <= bits >> 80 <= after
    for millis, random_part in [(0, 0), (2**48 - 1, 2**80 - 1), (1_764_161_234_567, 0x1234_5678_9ABC_DEF0_1234)]:
        expected = base64.b32encode(((millis << 80 | random_part) << 30).to_bytes(20, "big"))[:26].decode()
        assert _spell(millis, random_part).translate(crockford) == expected
