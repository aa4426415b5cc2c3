"""The agent's side of wire protocol v1, read and written without pydantic.

The pydantic models in :mod:`coact.shared.protocol` are the contract, and the relay
parses every agent frame with them. Importing pydantic and building those models
costs a resident agent ~9 MB, close to a quarter of its memory budget (decision 33), so the
agent reads the relay's seven message types and writes its own with the standard
library: :func:`parse_relay_frame` checks the same constraints the models declare
(required fields, types, lengths, bounds, no unknown fields, ``v`` of 1) and
:func:`encode` writes the fields in the models' order. ``tests/agent/test_frames.py``
holds the two to each other in both directions.

It also checks more than the models do, so that what it lets through can be
journaled, hashed and audited (decision 50): task and result ids are plain ids,
actions are catalog-shaped names, ``expires_at`` is an RFC 3339 timestamp, params
have a canonical JSON form (no integer beyond +-(2**53 - 1), no lone surrogate),
sequence numbers are non-negative safe integers and every text is bounded. The relay
never writes anything else; a frame that breaks one of these is refused as a whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from coact.shared.canonical import canonical_json
from coact.shared.clock import from_rfc3339
from coact.shared.errors import CanonicalizationError, ProtocolError
from coact.shared.wire import PROTOCOL_VERSION, RELAY_MESSAGE_TYPES, check_frame_size

# -- relay -> agent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """What the agent needs to run one task (``protocol.TaskSpec``)."""

    id: str
    action: str
    params: dict[str, Any]
    timeout_s: float
    expires_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    type: ClassVar[str] = "challenge"
    nonce: str
    relay_signature: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    device_id: str
    audit_seq: int
    audit_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMessage:
    type: ClassVar[str] = "task"
    task: TaskSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultAck:
    type: ClassVar[str] = "result_ack"
    task_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditAck:
    type: ClassVar[str] = "audit_ack"
    last_seq: int
    head_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditNack:
    type: ClassVar[str] = "audit_nack"
    code: str
    detail: str
    expected_seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Sent either way; the agent only receives it."""

    type: ClassVar[str] = "error"
    code: str
    detail: str


RelayMessage = Challenge | Welcome | TaskMessage | ResultAck | AuditAck | AuditNack | Error

# -- agent -> relay ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    type: ClassVar[str] = "auth"
    signature: str
    agent_version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    type: ClassVar[str] = "heartbeat"
    telemetry: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReceived:
    type: ClassVar[str] = "task_received"
    task_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    type: ClassVar[str] = "task_result"
    task_id: str
    status: str
    ok: bool
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditBatch:
    """Records as the outbox keeps them: each one's canonical JSON text, written into
    the frame as it is (:func:`encode`), never parsed and encoded again."""

    type: ClassVar[str] = "audit_batch"
    records: list[str]
    signature: str


AgentMessage = Auth | Heartbeat | TaskReceived | TaskResult | AuditBatch | Error


def encode(message: AgentMessage) -> str:
    """The frame for ``message``: ``v``, ``type``, then its fields, as compact JSON.

    The relay validates what it receives; this only writes. ``allow_nan=False``: a
    NaN or infinity has no JSON form, so it fails here rather than at the relay.
    """
    if isinstance(message, AuditBatch):
        # Each text is a JSON object this agent wrote (canonical_json at append).
        return (f'{{"v":{PROTOCOL_VERSION},"type":"audit_batch","records":[{",".join(message.records)}],'
                f'"signature":{json.dumps(message.signature)}}}')
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.type}
    for spec in fields(message):
        body[spec.name] = getattr(message, spec.name)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- reading -----------------------------------------------------------------------


class _Invalid(Exception):
    """A field's value breaks its constraint; the message says how."""


_REQUIRED = object()
Check = Callable[[Any], Any]


def _text(min_length: int = 0, max_length: int | None = None) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        if len(value) < min_length:
            raise _Invalid(f"must have at least {min_length} characters")
        if max_length is not None and len(value) > max_length:
            raise _Invalid(f"must have at most {max_length} characters")
        return value

    return check


_MAX_SAFE_INTEGER = 2**53 - 1


def _integer(value: Any) -> int:
    """A sequence number: every integer the relay sends is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("must be an integer")
    if not 0 <= value <= _MAX_SAFE_INTEGER:
        raise _Invalid(f"must be between 0 and {_MAX_SAFE_INTEGER}")
    return value


def _pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        if compiled.fullmatch(value) is None:
            raise _Invalid(f"must be {what}")
        return value

    return check


# Relay ids are "tsk_" and 26 base32 characters; tests and the simulator use other
# plain ids, so the check is for the shape, not the prefix.
_id = _pattern(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", "an id: letters, digits and _.:- (at most 64)")
_action = _pattern(r"(?=.{1,64}\Z)[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", "an action name such as file.read")
_hash = _pattern(r"[0-9a-f]{64}", "64 lowercase hex digits")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _timestamp(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    if len(value) > 40 or _RFC3339.fullmatch(value) is None:
        raise _Invalid("must be an RFC 3339 timestamp such as 2026-01-01T00:00:00Z")
    try:
        from_rfc3339(value)
    except (ValueError, OverflowError) as exc:
        raise _Invalid(f"must be an RFC 3339 timestamp ({exc})") from None
    return value


def _params(value: Any) -> dict[str, Any]:
    """An object the agent can journal: it must have a canonical JSON form."""
    params = _object(value)
    try:
        canonical_json(params)
    except CanonicalizationError as exc:
        raise _Invalid(f"has no canonical JSON form: {exc}") from None
    return params


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid("must be an object")
    return value


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("must be a number")
    if not 0 < value <= 86400:  # NaN and infinities fail too
        raise _Invalid("must be greater than 0 and at most 86400")
    return float(value)


def _version(value: Any) -> int:
    if isinstance(value, bool) or value != PROTOCOL_VERSION or not isinstance(value, int):
        raise _Invalid(f"must be {PROTOCOL_VERSION}")
    return PROTOCOL_VERSION


def _read(value: Any, where: str, spec: Mapping[str, tuple[Check, Any]]) -> dict[str, Any]:
    """The fields of the JSON object ``value`` per ``spec`` (name -> check, default)."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be an object")
    for name in value:
        if name not in spec:
            raise ProtocolError(f"{where}.{name}: unknown field (Extra inputs are not permitted)")
    out: dict[str, Any] = {}
    for name, (check, default) in spec.items():
        if name not in value:
            if default is _REQUIRED:
                raise ProtocolError(f"{where}.{name}: field required")
            out[name] = default
            continue
        try:
            out[name] = check(value[name])
        except _Invalid as exc:
            raise ProtocolError(f"{where}.{name}: {exc}") from None
    return out


_TASK_SPEC: dict[str, tuple[Check, Any]] = {
    "id": (_id, _REQUIRED),
    "action": (_action, _REQUIRED),
    "params": (_params, _REQUIRED),
    "timeout_s": (_timeout, _REQUIRED),
    "expires_at": (_optional(_timestamp), None),
}


def _task_spec(value: Any) -> TaskSpec:
    return TaskSpec(**_read(value, "task.task", _TASK_SPEC))


_RELAY_MESSAGES: dict[str, tuple[type[RelayMessage], dict[str, tuple[Check, Any]]]] = {
    "challenge": (Challenge, {"nonce": (_text(16, 128), _REQUIRED), "relay_signature": (_text(0, 128), _REQUIRED)}),
    "welcome": (Welcome, {"device_id": (_text(), _REQUIRED), "audit_seq": (_integer, _REQUIRED),
                          "audit_hash": (_text(), _REQUIRED)}),
    "task": (TaskMessage, {"task": (_task_spec, _REQUIRED)}),
    "result_ack": (ResultAck, {"task_id": (_id, _REQUIRED)}),
    "audit_ack": (AuditAck, {"last_seq": (_integer, _REQUIRED), "head_hash": (_hash, _REQUIRED)}),
    "audit_nack": (AuditNack, {"code": (_text(0, 64), _REQUIRED), "detail": (_text(0, 65536), _REQUIRED),
                               "expected_seq": (_optional(_integer), None)}),
    "error": (Error, {"code": (_text(0, 64), _REQUIRED), "detail": (_text(0, 65536), _REQUIRED)}),
}


def parse_relay_frame(frame: str | bytes) -> RelayMessage:
    """Parse a frame the agent received from the relay (raises :class:`ProtocolError`)."""
    check_frame_size(frame)
    try:
        body = json.loads(frame)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"message: invalid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError("message: must be a JSON object")
    if "type" not in body:
        raise ProtocolError("type: field required")
    kind = body.pop("type")
    if not isinstance(kind, str) or kind not in _RELAY_MESSAGES:
        raise ProtocolError(f"type: {kind!r} is not one of {', '.join(RELAY_MESSAGE_TYPES)}")
    if "v" in body:
        try:
            _version(body.pop("v"))
        except _Invalid as exc:
            raise ProtocolError(f"{kind}.v: {exc}") from None
    cls, spec = _RELAY_MESSAGES[kind]
    return cls(**_read(body, kind, spec))
