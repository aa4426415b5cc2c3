"""The agent's pydantic-free frames agree with the protocol models, both ways.

The relay writes with the models in ``coact.shared.protocol`` and the agent reads with
``coact.agent.frames``; the agent writes with ``frames.encode`` and the relay reads with
the models. Each direction is checked on hand-picked samples, on generated messages,
and on bad frames that both sides must refuse.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from coact.agent import frames
from coact.shared import protocol
from coact.shared.canonical import canonical_json
from coact.shared.chain import GENESIS, make_record
from coact.shared.clock import to_rfc3339
from coact.shared.errors import ProtocolError

HASH = "ab" * 32
RECORD = make_record(GENESIS, device_id="dev-1", kind="task.finished", ts="2026-01-01T00:00:00.000000Z",
                     data={"exit": 0, "ratio": 0.5, "text": "é\u2028\x00\n\""}, task_id="t-1")

RELAY_SAMPLES: list[BaseModel] = [
    protocol.Challenge(nonce="n" * 32, relay_signature="C" * 88),
    protocol.Welcome(device_id="dev-1", audit_seq=0, audit_hash="0" * 64),
    protocol.TaskMessage(task=protocol.TaskSpec(
        id="t-1", action="file.write", params={"path": "/x", "content": "é\n", "n": [1, 2.5, None, True]},
        timeout_s=30, expires_at="2026-01-01T01:00:00.000000Z",
    )),
    protocol.TaskMessage(task=protocol.TaskSpec(id="t" * 64, action="a", params={}, timeout_s=86400)),
    protocol.ResultAck(task_id="t-1"),
    protocol.AuditAck(last_seq=12, head_hash=HASH),
    protocol.AuditNack(code="gap", detail="chain continues at 13", expected_seq=13),
    protocol.AuditNack(code="fork", detail="seq 3 differs"),
    protocol.Error(code="revoked", detail="device revoked"),
]

AGENT_SAMPLES: list[frames.AgentMessage] = [
    frames.Auth(signature="A" * 88, agent_version="0.1.0"),
    frames.Auth(signature="A" * 88),
    frames.Heartbeat(telemetry={"cpu_percent": 12.5, "load_1m": 0.25, "uptime_s": 10, "pending_audit": 0}),
    frames.Heartbeat(telemetry={}),
    frames.TaskReceived(task_id="t-1"),
    frames.TaskResult(task_id="t-1", status="succeeded", ok=True, output={"text": "é\u2028\x00\t", "n": [1, None]},
                      started_at="2026-01-01T00:00:00.000000Z", finished_at="2026-01-01T00:00:01.000000Z"),
    frames.TaskResult(task_id="t-2", status="denied", ok=False, error="denied by local policy", finished_at="x"),
    frames.AuditBatch(records=[canonical_json(RECORD).decode()], signature="B" * 88),
    frames.AuditBatch(records=[canonical_json({**RECORD, "data": {"text": "é\u2028\"\\"}}).decode()] * 3,
                      signature="B" * 88),
]


def _fields(message: BaseModel) -> dict[str, Any]:
    body = message.model_dump()
    del body["v"], body["type"]
    return body


def _values(message: frames.RelayMessage | frames.AgentMessage) -> dict[str, Any]:
    values = {spec.name: getattr(message, spec.name) for spec in fields(message)}
    if isinstance(message, frames.TaskMessage):
        values["task"] = message.task.as_dict()
    if isinstance(message, frames.AuditBatch):
        values["records"] = [json.loads(text) for text in message.records]
    return values


def _as_model(message: frames.AgentMessage) -> BaseModel:
    model = {"auth": protocol.Auth, "heartbeat": protocol.Heartbeat, "task_received": protocol.TaskReceived,
             "task_result": protocol.TaskResult, "audit_batch": protocol.AuditBatch, "error": protocol.Error}
    built: BaseModel = model[message.type](**_values(message))
    return built


def test_the_same_message_types() -> None:
    assert {m.type for m in RELAY_SAMPLES} == set(protocol.RELAY_MESSAGE_TYPES)  # type: ignore[attr-defined]
    assert {m.type for m in AGENT_SAMPLES} | {"error"} == set(protocol.AGENT_MESSAGE_TYPES)


# ------------------------------------------------------------ relay -> agent


@pytest.mark.parametrize("model", RELAY_SAMPLES, ids=lambda m: m.type)  # type: ignore[attr-defined]
def test_relay_frames_read_as_the_models_wrote_them(model: BaseModel) -> None:
    frame = protocol.encode(model)
    for raw in (frame, frame.encode()):
        message = frames.parse_relay_frame(raw)
        assert type(message).__name__ == type(model).__name__
        assert message.type == model.type  # type: ignore[attr-defined]
        assert _values(message) == _fields(model)


def test_version_may_be_absent() -> None:
    assert frames.parse_relay_frame('{"type": "result_ack", "task_id": "t"}') == frames.ResultAck(task_id="t")


_texts = st.text(max_size=40)
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)
_seqs = st.integers(0, 2**53 - 1)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | _texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_texts, children, max_size=4),
    max_leaves=12,
)
_relay_models = st.one_of(
    st.builds(protocol.Challenge, nonce=st.text(min_size=16, max_size=128), relay_signature=st.text(max_size=128)),
    st.builds(protocol.Welcome, device_id=_texts, audit_seq=_seqs, audit_hash=_texts),
    st.builds(protocol.TaskMessage, task=st.builds(
        protocol.TaskSpec, id=_ids, action=st.from_regex(r"[a-z][a-z0-9_]{0,20}(\.[a-z][a-z0-9_]{0,20}){0,2}", fullmatch=True),
        params=st.dictionaries(_texts, _json, max_size=4),
        timeout_s=st.floats(min_value=0, max_value=86400, exclude_min=True),
        expires_at=st.none() | st.datetimes(timezones=st.just(UTC)).map(to_rfc3339),
    )),
    st.builds(protocol.ResultAck, task_id=_ids),
    st.builds(protocol.AuditAck, last_seq=_seqs, head_hash=st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    st.builds(protocol.AuditNack, code=_texts, detail=_texts, expected_seq=st.none() | _seqs),
    st.builds(protocol.Error, code=_texts, detail=_texts),
)


@given(_relay_models)
def test_any_relay_message_reads_the_same(model: BaseModel) -> None:
    message = frames.parse_relay_frame(protocol.encode(model))
    assert _values(message) == _fields(model)


BAD_RELAY_FRAMES: list[tuple[Any, str]] = [
    ({"v": 1, "type": "welcome", "device_id": "d", "audit_seq": 0, "audit_hash": "h", "admin": True}, "welcome.admin"),
    ({"v": 2, "type": "result_ack", "task_id": "t"}, "result_ack.v"),
    ({"v": "1", "type": "result_ack", "task_id": "t"}, "result_ack.v"),
    ({"type": "challenge", "nonce": "short", "relay_signature": "s"}, "challenge.nonce"),
    ({"type": "challenge", "nonce": "n" * 129, "relay_signature": "s"}, "challenge.nonce"),
    ({"type": "challenge", "nonce": "n" * 32}, "challenge.relay_signature"),
    ({"type": "challenge", "nonce": "n" * 32, "relay_signature": "s" * 129}, "challenge.relay_signature"),
    ({"type": "welcome", "device_id": "d", "audit_seq": 0.5, "audit_hash": "h"}, "welcome.audit_seq"),
    ({"type": "welcome", "device_id": 5, "audit_seq": 0, "audit_hash": "h"}, "welcome.device_id"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 1, "sudo": True}}, "task.task.sudo"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 0}}, "task.task.timeout_s"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 86401}}, "task.task.timeout_s"),
    ({"type": "task", "task": {"id": "", "action": "a", "params": {}, "timeout_s": 1}}, "task.task.id"),
    ({"type": "task", "task": {"id": "t" * 65, "action": "a", "params": {}, "timeout_s": 1}}, "task.task.id"),
    ({"type": "task", "task": {"id": "t", "action": "a" * 65, "params": {}, "timeout_s": 1}}, "task.task.action"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": [], "timeout_s": 1}}, "task.task.params"),
    ({"type": "task", "task": {"id": "t", "action": "a", "timeout_s": 1}}, "task.task.params"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 1, "expires_at": 5}},
     "task.task.expires_at"),
    ({"type": "task", "task": "run everything"}, "task.task"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {"s": "\ud800"}, "timeout_s": 1}},
     "task.task.params"),
    ({"type": "task", "task": {"id": "t\ud800", "action": "a", "params": {}, "timeout_s": 1}}, "task.task.id"),
    ({"type": "audit_ack", "last_seq": None, "head_hash": "h"}, "audit_ack.last_seq"),
    ({"type": "error", "code": "c"}, "error.detail"),
    ({"v": 1, "type": "auth", "signature": "s"}, ""),
    ({"v": 1, "type": "heartbeat"}, ""),
    ({"v": 1, "type": 5}, ""),
    ({"v": 1}, ""),
    ("", ""),
    ("not json", ""),
    ("[]", ""),
    ("null", ""),
    ('{"type": "result_ack", "task_id": "t"', ""),
    (b"\xff\xfe", ""),
    ('{"type":"error","code":"c","detail":"' + "x" * protocol.MAX_FRAME_BYTES + '"}', ""),
]


# The models run in pydantic's lax mode and coerce these; the relay never writes them
# (it encodes typed models), and the agent has no reason to be as forgiving.
STRICTER_HERE: list[tuple[Any, str]] = [
    ({"v": True, "type": "result_ack", "task_id": "t"}, "result_ack.v"),
    ({"type": "welcome", "device_id": "d", "audit_seq": "0", "audit_hash": "h"}, "welcome.audit_seq"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": "5"}}, "task.task.timeout_s"),
    ({"type": "audit_nack", "code": "c", "detail": "d", "expected_seq": "1"}, "audit_nack.expected_seq"),
    # What the agent could not journal or audit (issue 14, decision 50): the models let
    # them through, the relay never writes them.
    ({"type": "task", "task": {"id": "t", "action": "app.close", "params": {"pid": 100000000000000000001},
                               "timeout_s": 1}}, "task.task.params"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {"n": [{"deep": -(2**53) - 1}]}, "timeout_s": 1}},
     "task.task.params"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 1, "expires_at": "soon"}},
     "task.task.expires_at"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 1,
                               "expires_at": "2026-02-30T00:00:00Z"}}, "task.task.expires_at"),
    ({"type": "task", "task": {"id": "t", "action": "a", "params": {}, "timeout_s": 1,
                               "expires_at": "2026-01-01T00:00:00"}}, "task.task.expires_at"),
    ({"type": "task", "task": {"id": "../t", "action": "a", "params": {}, "timeout_s": 1}}, "task.task.id"),
    ({"type": "task", "task": {"id": "t", "action": "FILE READ", "params": {}, "timeout_s": 1}}, "task.task.action"),
    ({"type": "result_ack", "task_id": "t\n"}, "result_ack.task_id"),
    ({"type": "audit_ack", "last_seq": -1, "head_hash": "ab" * 32}, "audit_ack.last_seq"),
    ({"type": "audit_ack", "last_seq": 2**64, "head_hash": "ab" * 32}, "audit_ack.last_seq"),
    ({"type": "audit_ack", "last_seq": 1, "head_hash": "h"}, "audit_ack.head_hash"),
    ({"type": "audit_nack", "code": "c" * 65, "detail": "d"}, "audit_nack.code"),
    ({"type": "welcome", "device_id": "d", "audit_seq": -5, "audit_hash": "h"}, "welcome.audit_seq"),
    ({"type": "error", "code": "c", "detail": "d" * 65537}, "error.detail"),
]


def _refused(frame: Any, where: str) -> None:
    raw = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    with pytest.raises(ProtocolError) as info:
        frames.parse_relay_frame(raw)
    if where:
        assert str(info.value).startswith(where + ":")


@pytest.mark.parametrize(("frame", "where"), BAD_RELAY_FRAMES, ids=lambda v: str(v)[:60])
def test_bad_relay_frames_are_refused_by_both(frame: Any, where: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_relay_message(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    _refused(frame, where)


@pytest.mark.parametrize(("frame", "where"), STRICTER_HERE, ids=lambda v: str(v)[:60])
def test_the_agent_does_not_coerce_types(frame: Any, where: str) -> None:
    protocol.parse_relay_message(json.dumps(frame))
    _refused(frame, where)


# ------------------------------------------------------------ agent -> relay


@pytest.mark.parametrize("message", AGENT_SAMPLES, ids=lambda m: m.type)
def test_agent_frames_are_what_the_models_would_write(message: frames.AgentMessage) -> None:
    frame = frames.encode(message)
    model = _as_model(message)
    if isinstance(message, frames.AuditBatch):
        # Records keep the canonical key order they were stored in: the same JSON
        # value as the model writes, not the same bytes.
        assert json.loads(frame) == json.loads(protocol.encode(model))
    else:
        assert frame == protocol.encode(model)
    assert protocol.parse_agent_message(frame) == model


_statuses = st.sampled_from(["succeeded", "failed", "timed_out", "denied"])
_agent_messages = st.one_of(
    st.builds(frames.Auth, signature=st.text(max_size=128), agent_version=st.text(max_size=64)),
    st.builds(frames.Heartbeat, telemetry=st.dictionaries(_texts, _json, max_size=6)),
    st.builds(frames.TaskReceived, task_id=st.text(max_size=64)),
    st.builds(frames.TaskResult, task_id=st.text(max_size=64), status=_statuses, ok=st.booleans(), output=_json,
              error=st.none() | st.text(max_size=200), started_at=st.none() | _texts, finished_at=_texts),
)


@given(_agent_messages)
def test_any_agent_message_reads_back_at_the_relay(message: frames.AgentMessage) -> None:
    frame = frames.encode(message)
    model = _as_model(message)
    assert protocol.parse_agent_message(frame) == model
    # Floats may be spelled differently (1e-05 / 1e-5); the JSON values are the same.
    assert json.loads(frame) == json.loads(protocol.encode(model))


def test_nan_is_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        frames.encode(frames.Heartbeat(telemetry={"load": float("nan")}))



def test_an_audit_frame_filled_to_the_agents_byte_budget_fits_the_relays_frame_limit() -> None:
    from coact.agent.runtime import AUDIT_BATCH_BYTES
    from coact.shared.wire import MAX_FRAME_BYTES, check_frame_size

    text = canonical_json({**RECORD, "data": {"blob": "x" * 3000}}).decode()
    count = AUDIT_BATCH_BYTES // (len(text) + 1)
    frame = frames.encode(frames.AuditBatch(records=[text] * count, signature="B" * 88))
    assert AUDIT_BATCH_BYTES - len(text) < len(frame.encode()) <= MAX_FRAME_BYTES
    check_frame_size(frame)  # the relay's own size check (raises if over)
