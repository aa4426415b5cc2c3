"""Decoding of JSON request bodies: every malformed body is a :class:`BadRequest`.

Python's decoder accepts more than RFC 8259 and fails in ways a handler would not
expect: a body nested 400,000 deep raises ``RecursionError`` (an uncaught 500 once),
``json.loads`` on bytes guesses UTF-16/32 and decodes UTF-8 with ``surrogatepass``,
and a ``"\\ud800"`` escape yields a string no database driver can encode. This one
function refuses all of them, so that what reaches a handler is plain, storable JSON
of bounded depth (a value deeper than :data:`MAX_JSON_DEPTH` would also fail later,
in canonical JSON and in the audit chain's hashing).
"""

from __future__ import annotations

import json
from typing import Any

from coact.relay.errors import BadRequest
from coact.shared.wire import refuse_non_finite

MAX_JSON_DEPTH = 64


def decode_json_body(raw: bytes) -> Any:
    """The JSON value of ``raw`` (strict UTF-8, finite numbers, depth at most
    :data:`MAX_JSON_DEPTH`, no lone surrogates), or :class:`BadRequest` saying why."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    if _bracket_count_exceeds(text, MAX_JSON_DEPTH):
        _check_depth_of_text(text)
    try:
        value = json.loads(text, parse_constant=refuse_non_finite)
    except RecursionError:
        raise BadRequest(f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    _check_strings(value)
    return value


def _bracket_count_exceeds(text: str, limit: int) -> bool:
    # A body with few brackets cannot be deep: the common case skips the scan.
    return text.count("[") + text.count("{") > limit


def _check_depth_of_text(text: str) -> None:
    """Refuse nesting deeper than the limit before the recursive decoder sees it.

    Brackets inside strings do not count; a string is skipped with ``str.find``, so the
    scan is quick even for a megabyte of text.
    """
    depth, index, length = 0, 0, len(text)
    while index < length:
        char = text[index]
        if char == '"':
            index += 1
            while True:
                index = text.find('"', index)
                if index < 0:
                    return  # unterminated string: the decoder says so
                backslashes = 0
                while text[index - 1 - backslashes] == "\\":
                    backslashes += 1
                index += 1
                if backslashes % 2 == 0:
                    break
            continue
        if char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
        elif char in "]}":
            depth -= 1
        index += 1


def _check_strings(value: Any) -> None:
    """Refuse strings (keys included) that are not valid Unicode text: lone surrogates."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("body has a string with a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
