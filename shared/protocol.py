"""The agent ⇄ relay wire protocol (WebSocket text frames of JSON), version 1.

Every frame is one object ``{"v": 1, "type": ..., ...}``. The session opens with a
proof of key possession that a stolen bearer token cannot replay::

    relay → agent   challenge {nonce, relay_signature over relay_challenge_message(device_id, nonce)}
    agent → relay   auth {signature over auth_message(device_id, nonce)}
    relay → agent   welcome {device_id, audit_seq, audit_hash}

Both sides prove their key on every connection: the agent checks the relay's
signature against the relay identity key it pinned at enrollment.

then, in any order:

    agent → relay   heartbeat {telemetry}
    relay → agent   task {task}                 (at-least-once; agent dedups by id)
    agent → relay   task_received {task_id}
    agent → relay   task_result {task_id, status, ok, output, error, started_at, finished_at}
    relay → agent   result_ack {task_id}        (agent then forgets the stored result)
    agent → relay   audit_batch {records, signature}
    relay → agent   audit_ack {last_seq, head_hash} | audit_nack {code, detail, expected_seq}
    either          error {code, detail}

``docs/api/ws.md`` is the prose reference; the models here are the contract. The
constants and signed messages live in :mod:`coact.shared.wire` (re-exported here),
which the resident agent uses with its own pydantic-free reader and writer
(``coact.agent.frames``, decision 33).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from coact.shared.errors import ProtocolError
from coact.shared.wire import AGENT_MESSAGE_TYPES as AGENT_MESSAGE_TYPES
from coact.shared.wire import AUTH_PURPOSE as AUTH_PURPOSE
from coact.shared.wire import MAX_AUDIT_BATCH as MAX_AUDIT_BATCH
from coact.shared.wire import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from coact.shared.wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from coact.shared.wire import RELAY_MESSAGE_TYPES as RELAY_MESSAGE_TYPES
from coact.shared.wire import RELAY_PURPOSE as RELAY_PURPOSE
from coact.shared.wire import TOKEN_PURPOSE as TOKEN_PURPOSE
from coact.shared.wire import auth_message as auth_message
from coact.shared.wire import check_frame_size, refuse_non_finite_numbers
from coact.shared.wire import relay_challenge_message as relay_challenge_message
from coact.shared.wire import token_request_message as token_request_message

TaskStatus = Literal[
    "created", "rejected", "awaiting_approval", "approved", "queued", "dispatched",
    "running", "succeeded", "failed", "timed_out", "cancelled", "expired",
]
FINAL_STATUSES: frozenset[str] = frozenset(
    {"rejected", "succeeded", "failed", "timed_out", "cancelled", "expired"}
)
ResultStatus = Literal["succeeded", "failed", "timed_out", "denied"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = PROTOCOL_VERSION


class TaskSpec(BaseModel):
    """What the agent needs to run one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=64)
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, Any]
    timeout_s: float = Field(gt=0, le=86400)
    expires_at: str | None = None


class AuditRecord(TypedDict):
    """One audit record on the wire. A TypedDict, not a model: batches carry up to a
    thousand, and the relay hashes and stores them as the plain dicts they parse to."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    device_id: Annotated[str, Field(max_length=64)]
    seq: Annotated[int, Field(ge=1)]
    ts: Annotated[str, Field(max_length=40)]
    kind: Annotated[str, Field(max_length=64)]
    task_id: Annotated[str | None, Field(max_length=64)]
    data: dict[str, Any]
    # Lengths only: every hash is recomputed or compared with a stored one before
    # anything is kept, so a non-hex value is refused there (a pattern per record
    # cost a third of the parse).
    prev_hash: Annotated[str, Field(min_length=64, max_length=64)]
    hash: Annotated[str, Field(min_length=64, max_length=64)]


class Challenge(_Message):
    type: Literal["challenge"] = "challenge"
    nonce: str = Field(min_length=16, max_length=128)
    relay_signature: str = Field(max_length=128)


class Auth(_Message):
    type: Literal["auth"] = "auth"
    signature: str = Field(max_length=128)
    agent_version: str = Field(default="", max_length=64)


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    device_id: str
    audit_seq: int
    audit_hash: str


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"
    telemetry: dict[str, Any] = Field(default_factory=dict)


class TaskMessage(_Message):
    type: Literal["task"] = "task"
    task: TaskSpec


class TaskReceived(_Message):
    type: Literal["task_received"] = "task_received"
    task_id: str = Field(max_length=64)


class TaskResult(_Message):
    type: Literal["task_result"] = "task_result"
    task_id: str = Field(max_length=64)
    status: ResultStatus
    ok: bool
    output: Any = None
    error: str | None = Field(default=None, max_length=4096)
    started_at: str | None = None
    finished_at: str


class ResultAck(_Message):
    type: Literal["result_ack"] = "result_ack"
    task_id: str


class AuditBatch(_Message):
    type: Literal["audit_batch"] = "audit_batch"
    records: list[AuditRecord] = Field(min_length=1, max_length=MAX_AUDIT_BATCH)
    signature: str = Field(max_length=128)


class AuditAck(_Message):
    type: Literal["audit_ack"] = "audit_ack"
    last_seq: int
    head_hash: str


class AuditNack(_Message):
    type: Literal["audit_nack"] = "audit_nack"
    code: str
    detail: str
    expected_seq: int | None = None


class Error(_Message):
    type: Literal["error"] = "error"
    code: str
    detail: str


AgentMessage = Annotated[
    Auth | Heartbeat | TaskReceived | TaskResult | AuditBatch | Error, Field(discriminator="type")
]
RelayMessage = Annotated[
    Challenge | Welcome | TaskMessage | ResultAck | AuditAck | AuditNack | Error,
    Field(discriminator="type"),
]
_agent_adapter: TypeAdapter[AgentMessage] = TypeAdapter(AgentMessage)
_relay_adapter: TypeAdapter[RelayMessage] = TypeAdapter(RelayMessage)


def _parse(adapter: TypeAdapter[Any], frame: str | bytes) -> Any:
    check_frame_size(frame)
    refuse_non_finite_numbers(frame)
    try:
        return adapter.validate_json(frame)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ProtocolError(f"{where}: {first['msg']}") from exc


def parse_agent_message(frame: str | bytes) -> AgentMessage:
    """Parse a frame the relay received from an agent (raises :class:`ProtocolError`)."""
    result: AgentMessage = _parse(_agent_adapter, frame)
    return result


def parse_relay_message(frame: str | bytes) -> RelayMessage:
    """Parse a frame the agent received from the relay (raises :class:`ProtocolError`)."""
    result: RelayMessage = _parse(_relay_adapter, frame)
    return result


def encode(message: BaseModel) -> str:
    return message.model_dump_json()
