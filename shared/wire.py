"""The parts of wire protocol v1 that need no schema library: version, limits, message
type names, and the byte strings each side signs.

:mod:`coact.shared.protocol` (the pydantic models, the contract) re-exports all of
these. They live apart so that the resident agent, which speaks the protocol without
pydantic (``coact.agent.frames``, decision 33), can import them without loading it.
"""

from __future__ import annotations

import json
from typing import Literal, NoReturn

from coact.shared.canonical import canonical_json
from coact.shared.errors import ProtocolError

PROTOCOL_VERSION: Literal[1] = 1
AUTH_PURPOSE = "coact.ws.auth.v1"
RELAY_PURPOSE = "coact.ws.relay.v1"
TOKEN_PURPOSE = "coact.device.token.v1"
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_AUDIT_BATCH = 1000

AGENT_MESSAGE_TYPES = ("auth", "heartbeat", "task_received", "task_result", "audit_batch", "error")
RELAY_MESSAGE_TYPES = (
    "challenge", "welcome", "task", "result_ack", "audit_ack", "audit_nack", "error",
)


def check_frame_size(frame: str | bytes) -> None:
    """Raise :class:`ProtocolError` if ``frame`` is longer than ``MAX_FRAME_BYTES`` bytes."""
    # A str counts characters, up to four UTF-8 bytes each: measure the bytes. The
    # first test is cheap and spares encoding a frame that is too long anyway.
    size = len(frame)
    if size <= MAX_FRAME_BYTES and isinstance(frame, str):
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of at least {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")


def refuse_non_finite_numbers(text: str | bytes) -> None:
    """Raise :class:`ProtocolError` if ``text`` uses ``NaN`` or ``Infinity`` as a number.

    JSON has no such numbers, but Python's parsers (and pydantic's) accept them, and a
    stored NaN is refused by PostgreSQL and cannot be served back as JSON: a value that
    could never be stored would come back on every redelivery. A substring search
    clears almost every frame; only one that names them is parsed to tell a number
    from text that merely spells it.
    """
    probes = (b"NaN", b"Infinity") if isinstance(text, bytes) else ("NaN", "Infinity")
    if not any(probe in text for probe in probes):  # type: ignore[operator]
        return
    try:
        json.loads(text, parse_constant=refuse_non_finite)
    except NonFiniteNumber as exc:
        raise ProtocolError(str(exc)) from None
    except ValueError:
        return  # not JSON at all: the parser that follows says why


class NonFiniteNumber(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` where JSON allows only numbers."""


def refuse_non_finite(token: str) -> NoReturn:
    """``parse_constant`` for :func:`json.loads`, which otherwise accepts them (decision 42)."""
    raise NonFiniteNumber(f"{token} is not a JSON number")


def auth_message(device_id: str, nonce: str) -> bytes:
    """What the agent signs to prove, on this socket, that it holds the device key."""
    return canonical_json({"purpose": AUTH_PURPOSE, "device_id": device_id, "nonce": nonce})


def relay_challenge_message(device_id: str, nonce: str) -> bytes:
    """What the relay signs so the agent knows it talks to the relay it enrolled with."""
    return canonical_json({"purpose": RELAY_PURPOSE, "device_id": device_id, "nonce": nonce})


def token_request_message(device_id: str, ts: str, nonce: str) -> bytes:
    """What the agent signs to ask ``POST /devices/token`` for an access token."""
    return canonical_json({"purpose": TOKEN_PURPOSE, "device_id": device_id, "ts": ts, "nonce": nonce})
