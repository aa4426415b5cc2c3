"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme).

Everything Coact hashes or signs is first turned into these bytes, so the agent, the
relay and ``coact audit verify`` compute identical digests from the same data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import rfc8785

from coact.shared.errors import CanonicalizationError

# rfc8785 refuses every int outside the I-JSON safe range, +-(2**53 - 1).
_MAX_SAFE_INT = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of ``value``.

    JSON numbers are IEEE 754 doubles, and ints beyond +-(2**53 - 1) are refused as
    they would lose precision, with one exception: JCS writes a double such as
    ``1e20`` as the literal ``100000000000000000000``, which JSON parsers hand back as
    an int. Such an int, spelled exactly as JCS spells a double, is accepted so that
    canonical output stays canonicalisable after a parse.
    """
    if _plain(value):
        try:
            return _encode_plain(value)
        except (UnicodeEncodeError, TypeError):
            pass  # a lone surrogate (orjson: TypeError): let rfc8785 give its precise error
    try:
        try:
            return rfc8785.dumps(value)
        except rfc8785.IntegerDomainError:
            return rfc8785.dumps(_large_ints_as_doubles(value))
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        # ValueError: rfc8785 puts an int's digits in its message, and str() refuses
        # ints of more than 4300 digits.
        raise CanonicalizationError(f"not JSON-serialisable: {exc}") from exc


# For "plain" values -- no floats, ASCII keys, safe ints, exact built-in types -- a
# general JSON encoder that sorts keys and writes no whitespace already produces RFC
# 8785: ASCII key order is UTF-16 order, and the standard library and orjson both
# write the same minimal string escapes and plain integer digits. Audit records are
# such values, and this path is several times faster than the general one.
_STDLIB_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                                   allow_nan=False, check_circular=False)


def _stdlib_plain(value: Any) -> bytes:
    return _STDLIB_ENCODER.encode(value).encode("utf-8")


_encode_plain: Callable[[Any], bytes] = _stdlib_plain


def use_orjson() -> None:
    """Encode plain values with orjson in this process from now on.

    The bytes are the same (property-tested against rfc8785 with both encoders); only
    the speed differs: about 0.3 us instead of 5 us for an audit record. The relay,
    the fleet simulator and ``coact audit verify`` hash records by the million and
    switch at start; the resident agent hashes one record per action and keeps the
    standard library's encoder, because importing orjson adds ~1.8 MB to its memory
    (decision 41).
    """
    global _encode_plain
    import orjson

    _encode_plain = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)


def _plain(value: Any) -> bool:
    """True for values both plain encoders write exactly as RFC 8785 does."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if kind is dict:
        # Scalars inline: records are flat dicts, and a call per value costs as much
        # as the encoding itself.
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item is None:
                continue
            if item_kind is int:
                if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is list:
        return all(_plain(item) for item in value)
    return False  # floats, tuples, subclasses, anything else: the general path decides


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return sha256_hex(canonical_json(value))


def _large_ints_as_doubles(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
        # Accept only the digits JCS itself writes for a double (below 1e21 it writes
        # no exponent), so the int stands for that double and its text does not change;
        # any other large int would be silently rounded.
        if abs(value) < 10**21 and rfc8785.dumps(float(value)) == str(value).encode():
            return float(value)
        raise CanonicalizationError(
            f"integer of {value.bit_length()} bits is beyond +-(2**53 - 1) and is not the "
            "canonical form of a double"
        )
    if isinstance(value, dict):
        return {key: _large_ints_as_doubles(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_large_ints_as_doubles(item) for item in value]
    return value
