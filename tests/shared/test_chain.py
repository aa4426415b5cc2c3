"""The audit hash chain: building, verifying, fork detection and batch signatures."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from coact.shared import keys
from coact.shared.canonical import canonical_json
from coact.shared.chain import (
    BATCH_PURPOSE,
    GENESIS,
    GENESIS_HASH,
    RECORD_FIELDS,
    ChainHead,
    batch_message,
    check_overlap,
    hash_record,
    make_record,
    record_hash,
    sign_batch,
    verify_batch_signature,
    verify_chain,
)
from coact.shared.errors import (
    CanonicalizationError,
    ChainError,
    ChainForkError,
    ChainGapError,
    SignatureError,
)

DEVICE = "dev-1"


def build_chain(
    n: int, *, start: ChainHead = GENESIS, device_id: str = DEVICE, tag: str = ""
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    head = start
    for i in range(n):
        record = make_record(
            head,
            device_id=device_id,
            kind="task.started" if i % 2 else "policy.decision",
            ts=f"2026-01-01T00:00:{i % 60:02d}.000000Z",
            data={"i": i, "tag": tag, "nested": {"ok": i % 3 == 0, "x": i / 7}},
            task_id=f"task-{i}" if i % 3 else None,
        )
        records.append(record)
        head = ChainHead(record["seq"], record["hash"])
    return records


def head_of(records: list[dict[str, Any]]) -> ChainHead:
    return ChainHead(records[-1]["seq"], records[-1]["hash"])


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return keys.generate_private_key()


# ------------------------------------------------------------------ building


def test_make_record_shape_and_genesis_link() -> None:
    record = make_record(GENESIS, device_id=DEVICE, kind="agent.start", ts="2026-01-01T00:00:00Z")
    assert tuple(record) == RECORD_FIELDS
    assert record["seq"] == 1
    assert record["prev_hash"] == GENESIS_HASH == "0" * 64
    assert record["data"] == {}
    assert record["task_id"] is None
    assert record["hash"] == record_hash(record)
    assert len(record["hash"]) == 64


def test_record_hash_covers_every_field_but_hash() -> None:
    record = build_chain(1)[0]
    body = {name: record[name] for name in RECORD_FIELDS if name != "hash"}
    assert record["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()


_json_leaves = (
    st.none() | st.booleans() | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_json_data = st.dictionaries(
    st.text(), st.recursive(_json_leaves, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12),
    max_size=6,
)


@given(_json_data, st.text(max_size=20), st.integers(min_value=1, max_value=2**53 - 1), st.none() | st.text(max_size=20))
def test_hash_record_is_the_hash_of_the_whole_records_rfc8785_form(
    data: dict[str, Any], kind: str, seq: int, task_id: str | None
) -> None:
    """The hash is the SHA-256 of the record's RFC 8785 form, and the data text is
    cut out of that form: it must be exactly the data's own RFC 8785 form."""
    record = {"device_id": DEVICE, "seq": seq, "ts": "2026-01-01T00:00:00.000000Z", "kind": kind,
              "task_id": task_id, "data": data, "prev_hash": "0" * 64}
    try:
        expected = rfc8785.dumps(record)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        return  # no canonical form (a lone surrogate): canonical_json's own tests cover the refusal
    digest, data_json = hash_record(record)
    assert digest == hashlib.sha256(expected).hexdigest()
    assert data_json == rfc8785.dumps(data)


@pytest.mark.parametrize("data", [
    {"a": 1, "device_id": "inner", "z": {"b": 2, "device_id": 1}},
    {"note": ',"device_id":"x"', "device_id": [',"device_id":']},
    {},
], ids=["nested key", "in strings", "empty"])
def test_hash_record_finds_the_data_text_whatever_the_data_holds(data: dict[str, Any]) -> None:
    record = make_record(GENESIS, device_id=DEVICE, kind="k", ts="t", data=data)
    digest, data_json = hash_record(record)
    assert digest == record["hash"]
    assert data_json == rfc8785.dumps(data)


def test_make_record_copies_data() -> None:
    data = {"a": 1}
    record = make_record(GENESIS, device_id=DEVICE, kind="k", ts="t", data=data)
    data["a"] = 2
    verify_chain([record])


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**53 + 1, object()], ids=repr)
def test_make_record_refuses_data_without_canonical_form(bad: Any) -> None:
    with pytest.raises(CanonicalizationError):
        make_record(GENESIS, device_id=DEVICE, kind="k", ts="t", data={"bad": bad})


# ----------------------------------------------------------------- verifying


def test_verify_chain_returns_head() -> None:
    records = build_chain(5)
    assert verify_chain(records) == head_of(records)
    assert verify_chain(records, device_id=DEVICE) == head_of(records)


def test_verify_empty_batch_returns_start() -> None:
    start = ChainHead(7, "a" * 64)
    assert verify_chain([], start=start) is start


def test_verify_continuation_from_stored_head() -> None:
    records = build_chain(10)
    assert verify_chain(records[4:], start=head_of(records[:4])) == head_of(records)


def test_records_survive_a_json_round_trip() -> None:
    # What the relay verifies is what it parsed, not the agent's dicts.
    records = json.loads(json.dumps(build_chain(6)))
    assert verify_chain(records) == head_of(build_chain(6))


@pytest.mark.parametrize("first_index", [1, 2, 5])
def test_gap_at_start_of_batch(first_index: int) -> None:
    records = build_chain(8)
    with pytest.raises(ChainGapError) as info:
        verify_chain(records[first_index:])
    assert info.value.expected_seq == 1
    assert info.value.seq == 1


def test_gap_after_stored_head() -> None:
    records = build_chain(8)
    with pytest.raises(ChainGapError) as info:
        verify_chain(records[5:], start=head_of(records[:3]))
    assert info.value.expected_seq == 4


def test_replayed_batch_is_a_gap_not_a_success() -> None:
    records = build_chain(8)
    with pytest.raises(ChainGapError) as info:
        verify_chain(records[2:5], start=head_of(records))
    assert info.value.expected_seq == 9


def test_missing_record_in_the_middle() -> None:
    records = build_chain(6)
    del records[3]
    with pytest.raises(ChainError) as info:
        verify_chain(records)
    assert not isinstance(info.value, ChainGapError)
    assert info.value.seq == 5


def test_reordered_records() -> None:
    records = build_chain(6)
    records[2], records[3] = records[3], records[2]
    with pytest.raises(ChainError, match="missing or reordered") as info:
        verify_chain(records)
    assert info.value.seq == 4


def test_duplicated_record() -> None:
    records = build_chain(4)
    records.insert(2, records[1])
    with pytest.raises(ChainError) as info:
        verify_chain(records)
    assert info.value.seq == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("data", {"i": 2, "tag": "forged"}),
        ("ts", "2030-01-01T00:00:00.000000Z"),
        ("kind", "task.succeeded"),
        ("task_id", "task-other"),
        ("task_id", None),
        ("device_id", "dev-2"),
    ],
)
def test_altered_content_is_named(field: str, value: Any) -> None:
    records = build_chain(5)
    records[2] = {**records[2], field: value}
    if records[2][field] == build_chain(5)[2][field]:
        pytest.fail("the mutation must change the field")
    with pytest.raises(ChainError, match="altered") as info:
        verify_chain(records)
    assert info.value.seq == 3


def test_altered_prev_hash_is_named() -> None:
    records = build_chain(5)
    records[3] = {**records[3], "prev_hash": "f" * 64}
    with pytest.raises(ChainError, match="does not link") as info:
        verify_chain(records)
    assert info.value.seq == 4


def test_altered_hash_is_named() -> None:
    records = build_chain(5)
    records[1] = {**records[1], "hash": "e" * 64}
    with pytest.raises(ChainError) as info:
        verify_chain(records)
    assert info.value.seq == 2


def test_rehashed_forgery_breaks_the_next_link() -> None:
    records = build_chain(5)
    forged = {**records[2], "data": {"forged": True}}
    forged["hash"] = record_hash(forged)
    records[2] = forged
    with pytest.raises(ChainError, match="does not link") as info:
        verify_chain(records)
    assert info.value.seq == 4


def test_rehashed_forgery_of_the_last_record_is_caught_by_the_batch_signature(
    key: Ed25519PrivateKey,
) -> None:
    records = build_chain(5)
    signature = sign_batch(key, DEVICE, head_of(records))
    forged = {**records[-1], "data": {"forged": True}}
    forged["hash"] = record_hash(forged)
    records[-1] = forged
    forged_head = verify_chain(records)  # the links alone cannot tell
    with pytest.raises(ChainError):
        verify_batch_signature(keys.public_key_b64(key), DEVICE, forged_head, signature)


def test_device_mismatch() -> None:
    records = build_chain(3) + build_chain(2, start=head_of(build_chain(3)), device_id="dev-2")
    # One chain under two names: only the device filter catches it.
    assert verify_chain(records) == head_of(records)
    with pytest.raises(ChainError, match="another device") as info:
        verify_chain(records, device_id=DEVICE)
    assert info.value.seq == 4


def test_other_devices_chain_is_refused_from_the_first_record() -> None:
    with pytest.raises(ChainError, match="another device") as info:
        verify_chain(build_chain(3, device_id="dev-2"), device_id=DEVICE)
    assert info.value.seq == 1


@pytest.mark.parametrize("field", [f for f in RECORD_FIELDS if f not in ("seq", "prev_hash")])
def test_missing_field(field: str) -> None:
    records = build_chain(3)
    del records[1][field]
    with pytest.raises(ChainError) as info:
        verify_chain(records)
    assert info.value.seq == 2


@pytest.mark.parametrize("seq", [None, "2", 2.0, True])
def test_non_integer_seq(seq: Any) -> None:
    records = build_chain(3)
    records[1] = {**records[1], "seq": seq}
    with pytest.raises(ChainError, match="no integer seq") as info:
        verify_chain(records)
    assert info.value.seq == 2


@pytest.mark.parametrize("bad", [math.nan, 2**53 + 1, [1, {"x": math.inf}]], ids=repr)
def test_data_without_canonical_form_is_a_chain_error(bad: Any) -> None:
    # A parsed wire batch can carry NaN or a huge int: the verifier must name the
    # record, not leak a CanonicalizationError.
    records = build_chain(3)
    records[1] = {**records[1], "data": {"bad": bad}}
    with pytest.raises(ChainError, match="no canonical form") as info:
        verify_chain(records)
    assert info.value.seq == 2


# ------------------------------------------------------------ fork detection


def test_check_overlap_accepts_identical_and_new_records() -> None:
    records = build_chain(6)
    stored = {r["seq"]: r["hash"] for r in records[:4]}
    check_overlap(stored, records[2:])
    check_overlap({}, records)
    check_overlap(stored, [])


def test_check_overlap_detects_fork() -> None:
    honest = build_chain(6, tag="honest")
    stored = {r["seq"]: r["hash"] for r in honest}
    shared_prefix = honest[:2]
    forked = shared_prefix + build_chain(3, start=head_of(shared_prefix), tag="fork")
    verify_chain(forked)  # the fork is a valid chain on its own
    with pytest.raises(ChainForkError) as info:
        check_overlap(stored, forked)
    assert info.value.seq == 3
    assert isinstance(info.value, ChainError)


# ---------------------------------------------------------- batch signatures


def test_batch_sign_and_verify(key: Ed25519PrivateKey) -> None:
    head = verify_chain(build_chain(4))
    signature = sign_batch(key, DEVICE, head)
    verify_batch_signature(keys.public_key_b64(key), DEVICE, head, signature)


def test_batch_message_is_canonical_and_names_its_purpose() -> None:
    message = batch_message(DEVICE, 4, "a" * 64)
    assert message == canonical_json(
        {"purpose": BATCH_PURPOSE, "device_id": DEVICE, "last_seq": 4, "head_hash": "a" * 64}
    )
    assert BATCH_PURPOSE.encode() in message


@pytest.mark.parametrize(
    ("device_id", "head"),
    [
        (DEVICE, ChainHead(3, "0" * 64)),  # another hash
        (DEVICE, "earlier"),  # an earlier head of the same chain
        ("dev-2", None),  # the same head claimed for another device
    ],
)
def test_signature_over_another_head_fails(
    key: Ed25519PrivateKey, device_id: str, head: ChainHead | str | None
) -> None:
    records = build_chain(4)
    signed = head_of(records)
    signature = sign_batch(key, DEVICE, signed)
    if head is None:
        head = signed
    elif head == "earlier":
        head = head_of(records[:3])
    assert isinstance(head, ChainHead)
    with pytest.raises(ChainError, match="does not verify") as info:
        verify_batch_signature(keys.public_key_b64(key), device_id, head, signature)
    assert info.value.seq == head.seq
    assert isinstance(info.value.__cause__, SignatureError)


def test_batch_signature_by_another_key_fails(key: Ed25519PrivateKey) -> None:
    head = verify_chain(build_chain(2))
    signature = sign_batch(keys.generate_private_key(), DEVICE, head)
    with pytest.raises(ChainError):
        verify_batch_signature(keys.public_key_b64(key), DEVICE, head, signature)


def test_malformed_batch_signature_is_a_chain_error(key: Ed25519PrivateKey) -> None:
    head = verify_chain(build_chain(2))
    with pytest.raises(ChainError):
        verify_batch_signature(keys.public_key_b64(key), DEVICE, head, "not base64")


# ---------------------------------------------------------------- properties

CONTENT_FIELDS = ("data", "ts", "kind", "task_id", "device_id")
MUTATIONS = (*CONTENT_FIELDS, "prev_hash", "hash", "seq", "seq_type", "rehash")


@given(st.data())
def test_any_single_mutation_is_detected_at_the_right_seq(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=30), label="length")
    records = build_chain(n)
    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    original = records[index]
    seq = original["seq"]
    mutated = dict(original)

    if mutation in CONTENT_FIELDS or mutation == "rehash":
        field = data.draw(st.sampled_from(CONTENT_FIELDS)) if mutation == "rehash" else mutation
        if field == "data":
            new: Any = data.draw(
                st.dictionaries(
                    st.text(max_size=5), st.integers(-(2**53) + 1, 2**53 - 1), max_size=3
                )
            )
        elif field == "task_id":
            new = data.draw(st.none() | st.text(max_size=10))
        else:
            new = data.draw(st.text(max_size=20))
        if new == original[field]:
            return  # not a mutation
        mutated[field] = new
        if mutation == "rehash":
            mutated["hash"] = record_hash(mutated)
    elif mutation in ("prev_hash", "hash"):
        new = data.draw(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
        if new == original[mutation]:
            return
        mutated[mutation] = new
    elif mutation == "seq":
        new = data.draw(st.integers(min_value=-5, max_value=40).filter(lambda s: s != seq))
        mutated["seq"] = new
    else:  # seq_type
        mutated["seq"] = data.draw(st.sampled_from([str(seq), float(seq), None, True]))
    records[index] = mutated

    if mutation == "rehash":
        # A forger who re-hashes fixes this record's own check; the next link breaks,
        # and for the last record only the batch signature over the head can tell.
        if index == n - 1:
            assert verify_chain(records) != head_of(build_chain(n))
            return
        with pytest.raises(ChainError) as info:
            verify_chain(records)
        assert info.value.seq == seq + 1
        return

    with pytest.raises(ChainError) as info:
        verify_chain(records)
    error = info.value
    if mutation == "seq" and index == 0:
        assert isinstance(error, ChainGapError)
        assert error.expected_seq == 1
    elif mutation == "seq":
        # Mid-batch, the error names the seq the record claims.
        assert not isinstance(error, ChainGapError)
        assert error.seq == mutated["seq"]
    else:
        assert not isinstance(error, ChainGapError)
        assert error.seq == seq
