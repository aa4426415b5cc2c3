"""Opaque, time-ordered identifiers: ``<prefix>_<26 chars>``.

The first 10 characters encode the creation time in milliseconds (Crockford base32),
so ordering by id orders by creation, which keyset pagination relies on; the other
16 carry 80 random bits.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _base32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    stamp = _base32(time.time_ns() // 1_000_000, 10)
    return f"{prefix}_{stamp}{_base32(secrets.randbits(80), 16)}"
