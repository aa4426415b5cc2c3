"""Wire protocol v1: every message round-trips, and bad frames get a specific ProtocolError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from coact.shared import keys, protocol
from coact.shared.canonical import canonical_json
from coact.shared.chain import GENESIS, ChainHead, make_record, verify_chain
from coact.shared.errors import ChainError, ProtocolError, SignatureError
from coact.shared.protocol import (
    AGENT_MESSAGE_TYPES,
    AUTH_PURPOSE,
    MAX_AUDIT_BATCH,
    MAX_FRAME_BYTES,
    RELAY_MESSAGE_TYPES,
    RELAY_PURPOSE,
    TOKEN_PURPOSE,
    AuditAck,
    AuditBatch,
    AuditNack,
    AuditRecord,
    Auth,
    Challenge,
    Error,
    Heartbeat,
    ResultAck,
    TaskMessage,
    TaskReceived,
    TaskResult,
    TaskSpec,
    Welcome,
    auth_message,
    encode,
    parse_agent_message,
    parse_relay_message,
    relay_challenge_message,
    token_request_message,
)

HASH = "ab" * 32
RECORD = make_record(
    GENESIS,
    device_id="dev-1",
    kind="task.finished",
    ts="2026-01-01T00:00:00.000000Z",
    data={"exit": 0, "ratio": 0.5, "text": "é\u2028\x00"},
    task_id="t-1",
)

AGENT_SAMPLES: list[BaseModel] = [
    Auth(signature="A" * 88, agent_version="0.1.0"),
    Heartbeat(telemetry={"cpu": 12.5, "disks": [{"mount": "/", "free": 10}]}),
    Heartbeat(),
    TaskReceived(task_id="t-1"),
    TaskResult(
        task_id="t-1",
        status="succeeded",
        ok=True,
        output={"stdout": "hi", "lines": [1, 2]},
        started_at="2026-01-01T00:00:00.000000Z",
        finished_at="2026-01-01T00:00:01.000000Z",
    ),
    TaskResult(task_id="t-2", status="denied", ok=False, error="policy", finished_at="x"),
    AuditBatch(records=[AuditRecord(**RECORD)], signature="B" * 88),
    Error(code="bad_frame", detail="what went wrong"),
]
RELAY_SAMPLES: list[BaseModel] = [
    Challenge(nonce="n" * 32, relay_signature="C" * 88),
    Welcome(device_id="dev-1", audit_seq=0, audit_hash="0" * 64),
    TaskMessage(
        task=TaskSpec(
            id="t-1",
            action="shell.run",
            params={"cmd": ["echo", "hi"], "env": {}},
            timeout_s=30,
            expires_at="2026-01-01T01:00:00.000000Z",
        )
    ),
    ResultAck(task_id="t-1"),
    AuditAck(last_seq=12, head_hash=HASH),
    AuditNack(code="gap", detail="chain continues at 13", expected_seq=13),
    AuditNack(code="fork", detail="seq 3 differs"),
    Error(code="unauthorised", detail="token expired"),
]


def _type(message: BaseModel) -> str:
    value = getattr(message, "type")  # noqa: B009 - every message has one
    assert isinstance(value, str)
    return value


def test_samples_cover_every_message_type() -> None:
    assert {_type(m) for m in AGENT_SAMPLES} == set(AGENT_MESSAGE_TYPES)
    assert {_type(m) for m in RELAY_SAMPLES} == set(RELAY_MESSAGE_TYPES)


@pytest.mark.parametrize(
    ("message", "parse"),
    [(m, parse_agent_message) for m in AGENT_SAMPLES]
    + [(m, parse_relay_message) for m in RELAY_SAMPLES],
    ids=lambda v: _type(v) if isinstance(v, BaseModel) else v.__name__,
)
def test_round_trip(message: BaseModel, parse: Callable[[str | bytes], BaseModel]) -> None:
    frame = encode(message)
    body = json.loads(frame)
    assert body["v"] == 1
    assert body["type"] == _type(message)
    assert parse(frame) == message
    assert parse(frame.encode()) == message
    assert type(parse(frame)) is type(message)


def test_version_defaults_to_1_when_absent() -> None:
    assert parse_agent_message('{"type": "heartbeat"}') == Heartbeat()


def test_audit_batch_records_still_verify_after_the_wire() -> None:
    batch = parse_agent_message(encode(AGENT_SAMPLES[6]))
    assert isinstance(batch, AuditBatch)
    head = verify_chain([dict(record) for record in batch.records])
    assert head.hash == RECORD["hash"]


# ------------------------------------------------------------- bad frames


def _error(parse: Callable[[str | bytes], Any], frame: str | bytes | dict[str, Any]) -> str:
    if isinstance(frame, dict):
        frame = json.dumps(frame)
    with pytest.raises(ProtocolError) as info:
        parse(frame)
    return str(info.value)


def test_unknown_type() -> None:
    message = _error(parse_agent_message, {"v": 1, "type": "launch_missiles"})
    assert "launch_missiles" in message
    assert "heartbeat" in message  # says what would have been accepted


def test_missing_type() -> None:
    assert "type" in _error(parse_agent_message, {"v": 1})


@pytest.mark.parametrize(
    "sample",
    [
        Challenge(nonce="n" * 32, relay_signature="C" * 88),
        Welcome(device_id="d", audit_seq=0, audit_hash="0"),
    ],
)
def test_relay_messages_are_not_accepted_from_an_agent(sample: BaseModel) -> None:
    assert _type(sample) in _error(parse_agent_message, encode(sample))


@pytest.mark.parametrize("sample", [Auth(signature="x"), TaskReceived(task_id="t")])
def test_agent_messages_are_not_accepted_from_the_relay(sample: BaseModel) -> None:
    assert _type(sample) in _error(parse_relay_message, encode(sample))


@pytest.mark.parametrize("version", [0, 2, "1", None, [1]])
def test_wrong_version(version: Any) -> None:
    message = _error(parse_agent_message, {"v": version, "type": "heartbeat"})
    assert message.startswith("heartbeat.v:")


@pytest.mark.parametrize(
    ("frame", "where"),
    [
        ({"v": 1, "type": "heartbeat", "admin": True}, "heartbeat.admin"),
        ({"v": 1, "type": "task_received", "task_id": "t", "extra": 1}, "task_received.extra"),
        (
            {"v": 1, "type": "audit_batch", "signature": "s", "records": [{**RECORD, "note": "x"}]},
            "audit_batch.records.0.note",
        ),
    ],
)
def test_extra_fields_are_refused_and_named(frame: dict[str, Any], where: str) -> None:
    message = _error(parse_agent_message, frame)
    assert message.startswith(where + ":")
    assert "Extra inputs are not permitted" in message


def test_extra_field_in_task_spec() -> None:
    task = {"id": "t", "action": "a", "params": {}, "timeout_s": 1, "sudo": True}
    assert _error(parse_relay_message, {"v": 1, "type": "task", "task": task}).startswith(
        "task.task.sudo:"
    )


@pytest.mark.parametrize(
    "bad_hash", ["ab" * 31, "ab" * 33, ""], ids=["short", "long", "empty"],
)
@pytest.mark.parametrize("field", ["hash", "prev_hash"])
def test_hash_of_the_wrong_length_is_refused_by_the_parser(field: str, bad_hash: str) -> None:
    frame = {
        "v": 1,
        "type": "audit_batch",
        "signature": "s",
        "records": [{**RECORD, field: bad_hash}],
    }
    message = _error(parse_agent_message, frame)
    assert message.startswith(f"audit_batch.records.0.{field}:")
    assert "64 characters" in message


@pytest.mark.parametrize(
    "spoil", [str.upper, lambda h: "g" + h[1:], lambda h: h[:-1] + "\n"], ids=["uppercase", "non-hex", "newline"],
)
@pytest.mark.parametrize("field", ["hash", "prev_hash"])
def test_hash_of_the_right_length_but_not_lowercase_hex_is_refused_by_the_chain(field: str, spoil: Any) -> None:
    # The parser checks only the length; every hash is then recomputed or compared
    # with the one before it, which a spelling other than lowercase hex never matches.
    first = make_record(GENESIS, device_id="dev-a", kind="k", ts="2026-01-01T00:00:00.000000Z")
    second = make_record(ChainHead(1, first["hash"]), device_id="dev-a", kind="k", ts="2026-01-01T00:00:01.000000Z")
    spoilt = {**second, field: spoil(second[field])}
    assert spoilt[field] != second[field]
    frame = {"v": 1, "type": "audit_batch", "signature": "s", "records": [first, spoilt]}
    parsed = parse_agent_message(json.dumps(frame))
    assert isinstance(parsed, AuditBatch)
    with pytest.raises(ChainError, match="altered" if field == "hash" else "does not link"):
        verify_chain(parsed.records, device_id="dev-a")


def test_audit_batch_size_limits() -> None:
    empty = {"v": 1, "type": "audit_batch", "signature": "s", "records": []}
    assert _error(parse_agent_message, empty).startswith("audit_batch.records:")
    too_many = {**empty, "records": [RECORD] * (MAX_AUDIT_BATCH + 1)}
    assert _error(parse_agent_message, too_many).startswith("audit_batch.records:")


@pytest.mark.parametrize(
    "frame", ["", "not json", "[]", "null", '{"v": 1, "type": "heartbeat"', b"\xff\xfe"]
)
def test_not_a_json_object(frame: str | bytes) -> None:
    assert _error(parse_agent_message, frame)


def _heartbeat_of_size(size: int) -> str:
    bare = '{"v":1,"type":"heartbeat","telemetry":{"pad":""}}'
    frame = bare.replace('""', '"' + "x" * (size - len(bare)) + '"')
    assert len(frame.encode()) == size
    return frame


def test_frame_at_the_limit_parses() -> None:
    assert isinstance(parse_agent_message(_heartbeat_of_size(MAX_FRAME_BYTES)), Heartbeat)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_oversize_frame(as_bytes: bool) -> None:
    frame: str | bytes = _heartbeat_of_size(MAX_FRAME_BYTES + 1)
    if as_bytes:
        frame = frame.encode()
    message = _error(parse_agent_message, frame)
    assert "exceeds" in message
    assert str(MAX_FRAME_BYTES) in message


def test_oversize_text_frame_is_measured_in_bytes() -> None:
    # Fewer characters than the limit, but twice as many UTF-8 bytes.
    bare = '{"v":1,"type":"heartbeat","telemetry":{"pad":""}}'
    frame = bare.replace('""', '"' + "é" * (MAX_FRAME_BYTES // 2) + '"')
    assert len(frame) < MAX_FRAME_BYTES < len(frame.encode())
    assert "exceeds" in _error(parse_agent_message, frame)


def test_protocol_error_for_bad_field_types() -> None:
    message = _error(parse_agent_message, {"v": 1, "type": "task_received", "task_id": 5})
    assert message.startswith("task_received.task_id:")


def test_task_spec_limits() -> None:
    task = {"id": "t", "action": "a", "params": {}, "timeout_s": 0}
    assert _error(parse_relay_message, {"v": 1, "type": "task", "task": task}).startswith(
        "task.task.timeout_s:"
    )


def test_short_nonce_is_refused() -> None:
    frame = {"type": "challenge", "nonce": "short", "relay_signature": "s"}
    assert _error(parse_relay_message, frame).startswith("challenge.nonce:")


def test_challenge_without_relay_signature_is_refused() -> None:
    frame = {"type": "challenge", "nonce": "n" * 32}
    assert _error(parse_relay_message, frame).startswith("challenge.relay_signature:")


# -------------------------------------------------------- signed messages


def test_auth_message_is_canonical_and_purposeful() -> None:
    message = auth_message("dev-1", "n" * 32)
    assert message == canonical_json(
        {"purpose": AUTH_PURPOSE, "device_id": "dev-1", "nonce": "n" * 32}
    )
    assert AUTH_PURPOSE.encode() in message
    assert json.loads(message) == {"purpose": AUTH_PURPOSE, "device_id": "dev-1", "nonce": "n" * 32}
    assert auth_message("dev-1", "n" * 32) == message
    assert auth_message("dev-1", "m" * 32) != message
    assert auth_message("dev-2", "n" * 32) != message


def test_token_request_message_is_canonical_and_purposeful() -> None:
    message = token_request_message("dev-1", "2026-01-01T00:00:00.000000Z", "abc")
    expected = {
        "purpose": TOKEN_PURPOSE,
        "device_id": "dev-1",
        "ts": "2026-01-01T00:00:00.000000Z",
        "nonce": "abc",
    }
    assert message == canonical_json(expected)
    assert TOKEN_PURPOSE.encode() in message
    assert json.loads(message) == expected


def test_relay_challenge_message_is_canonical_and_purposeful() -> None:
    message = relay_challenge_message("dev-1", "n" * 32)
    expected = {"purpose": RELAY_PURPOSE, "device_id": "dev-1", "nonce": "n" * 32}
    assert message == canonical_json(expected)
    assert RELAY_PURPOSE.encode() in message
    assert json.loads(message) == expected


def test_signatures_do_not_cross_purposes() -> None:
    # A signature made for one purpose must not be accepted for another: an agent's
    # socket proof is no token request, and the relay's challenge proof is neither.
    assert len({AUTH_PURPOSE, RELAY_PURPOSE, TOKEN_PURPOSE}) == 3
    messages = [
        auth_message("dev-1", "nonce-nonce-nonce"),
        relay_challenge_message("dev-1", "nonce-nonce-nonce"),
        token_request_message("dev-1", "", "nonce-nonce-nonce"),
    ]
    key = keys.generate_private_key()
    public = keys.public_key_b64(key)
    for signed in messages:
        signature = keys.sign(key, signed)
        keys.verify(public, signed, signature)
        for other in messages:
            if other != signed:
                with pytest.raises(SignatureError):
                    keys.verify(public, other, signature)


def test_final_statuses_are_task_statuses() -> None:
    assert set(protocol.TaskStatus.__args__) >= protocol.FINAL_STATUSES


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(number: str) -> None:
    frame = ('{"v":1,"type":"task_result","task_id":"t","status":"succeeded","ok":true,'
             f'"output":{{"x":[1,{number}]}},"finished_at":"x"}}')
    with pytest.raises(ProtocolError, match=f"{number.lstrip('-')} is not a JSON number"):
        parse_agent_message(frame)
    with pytest.raises(ProtocolError, match="is not a JSON number"):
        parse_agent_message(frame.encode())


def test_text_that_spells_nan_is_just_text() -> None:
    frame = ('{"v":1,"type":"task_result","task_id":"NaN","status":"succeeded","ok":true,'
             '"output":{"Infinity":"NaN banana"},"finished_at":"x"}')
    message = parse_agent_message(frame)
    assert isinstance(message, TaskResult)
    assert message.output == {"Infinity": "NaN banana"}
