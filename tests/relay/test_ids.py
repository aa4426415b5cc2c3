"""Identifiers order by creation, also within one millisecond."""

from __future__ import annotations

import threading

from coact.relay.ids import new_id


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
