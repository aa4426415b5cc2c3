"""Opaque, time-ordered identifiers: ``<prefix>_<26 chars>``.

The first 10 characters encode the creation time in milliseconds (Crockford base32),
so ordering by id orders by creation, which keyset pagination relies on; the other
16 carry 80 random bits. Within one process ids are strictly increasing: an id made
in the same millisecond as the previous one (or after the clock stepped back) takes
the previous one's time and random part plus one, as monotonic ULIDs do, so two
objects made back to back still list in the order they were made.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


_RANDOM_LIMIT = 1 << 80
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the previous id


def new_id(prefix: str) -> str:
    global _last
    with _lock:
        millis, last_random = _last
        now = time.time_ns() // 1_000_000
        if now > millis:
            millis, random_part = now, secrets.randbits(80)
        else:
            random_part = last_random + 1
            if random_part == _RANDOM_LIMIT:
                millis, random_part = millis + 1, secrets.randbits(80)
        _last = (millis, random_part)
    return f"{prefix}_{_base32(millis, 10)}{_base32(random_part, 16)}"
