"""verify_audit names the first record of each chain that does not verify."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coact.shared import keys
from coact.shared.auditcheck import Finding, verify_audit
from coact.shared.chain import GENESIS, ChainHead, make_record, sign_batch

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC = {"dev-a": keys.public_key_b64(KEY), "dev-b": keys.public_key_b64(KEY)}


def chain(device_id: str, n: int) -> list[dict[str, Any]]:
    head, out = GENESIS, []
    for i in range(n):
        record = make_record(
            head,
            device_id=device_id,
            kind="tick",
            ts=f"2026-01-01T00:00:{i:02d}.000000Z",
            data={"n": i},
            task_id=f"t{i}" if i % 2 else None,
        )
        head = ChainHead(record["seq"], record["hash"])
        out.append(record)
    return out


def batch(records: list[dict[str, Any]], upto: int, key: Ed25519PrivateKey = KEY) -> dict[str, Any]:
    record = records[upto - 1]
    device_id = record["device_id"]
    return {
        "device_id": device_id,
        "last_seq": upto,
        "head_hash": record["hash"],
        "signature": sign_batch(key, device_id, ChainHead(upto, record["hash"])),
        "public_key": keys.public_key_b64(key),
    }


def test_valid_chains_verify() -> None:
    a, b = chain("dev-a", 5), chain("dev-b", 3)
    report = verify_audit(a + b, [batch(a, 2), batch(a, 5), batch(b, 3)], PUBLIC)
    assert report.ok
    assert (report.chains, report.records, report.findings) == (2, 8, ())


def test_nothing_to_verify_is_ok() -> None:
    assert verify_audit([], [], {}).ok


def test_order_of_input_does_not_matter() -> None:
    a = chain("dev-a", 4)
    assert verify_audit(list(reversed(a)), [batch(a, 4)], PUBLIC).ok


def test_altered_data_is_named() -> None:
    a = chain("dev-a", 20)
    a[16]["data"] = {"n": 999}
    report = verify_audit(a, [batch(a, 20)], PUBLIC)
    assert report.findings == (
        Finding("dev-a", 17, "record 17 was altered: its hash does not match its content"),
    )
    assert not report.ok


def test_only_the_first_bad_record_of_a_chain_is_named() -> None:
    a = chain("dev-a", 6)
    a[2]["kind"] = "x"
    a[4]["kind"] = "y"
    report = verify_audit(a, [batch(a, 6)], PUBLIC)
    assert [f.seq for f in report.findings] == [3]


def test_chain_must_start_at_one() -> None:
    a = chain("dev-a", 5)
    report = verify_audit(a[2:], [batch(a, 5)], PUBLIC)
    assert report.findings[0].seq == 1
    assert "starts at seq 3" in report.findings[0].problem


def test_seq_below_one_is_named() -> None:
    a = chain("dev-a", 3)
    a[1]["seq"] = 0
    report = verify_audit(a, [batch(chain("dev-a", 3), 3)], PUBLIC)
    assert report.findings[0] == Finding("dev-a", 0, "record has seq 0: chains start at seq 1")


def test_missing_middle_record_is_named() -> None:
    a = chain("dev-a", 5)
    report = verify_audit(a[:2] + a[3:], [batch(a, 5)], PUBLIC)
    assert report.findings[0] == Finding(
        "dev-a", 4, "seq 4 follows 2: records missing or reordered"
    )


def test_bad_signature_is_named() -> None:
    a = chain("dev-a", 3)
    report = verify_audit(a, [batch(a, 3, key=OTHER_KEY)], PUBLIC)
    assert (
        Finding("dev-a", 3, "batch ending at seq 3: signature does not verify") in report.findings
    )


def test_signature_is_checked_against_the_given_key_not_the_stored_one() -> None:
    a = chain("dev-a", 3)
    forged = batch(a, 3, key=OTHER_KEY)
    assert forged["public_key"] == keys.public_key_b64(OTHER_KEY)
    assert not verify_audit(a, [forged], PUBLIC).ok


def test_missing_public_key_is_a_finding() -> None:
    a = chain("dev-a", 2)
    report = verify_audit(a, [batch(a, 2)], {})
    assert report.findings == (Finding("dev-a", None, "no public key is known for this device"),)


def test_batch_head_must_match_the_stored_record() -> None:
    a = chain("dev-a", 3)
    fork = batch(a, 3)
    fork["head_hash"] = "f" * 64
    fork["signature"] = sign_batch(KEY, "dev-a", ChainHead(3, "f" * 64))
    report = verify_audit(a, [fork], PUBLIC)
    assert any(f.seq == 3 and "sealed hash ffffffffffff" in f.problem for f in report.findings)


def test_batch_beyond_the_stored_chain_is_named() -> None:
    a = chain("dev-a", 5)
    report = verify_audit(a[:3], [batch(a, 3), batch(a, 5)], PUBLIC)
    assert [f.seq for f in report.findings] == [5]
    assert "not stored" in report.findings[0].problem


def test_unsealed_tail_is_named() -> None:
    a = chain("dev-a", 5)
    report = verify_audit(a, [batch(a, 3)], PUBLIC)
    assert report.findings == (
        Finding("dev-a", 4, "records 4..5 are not covered by a signed batch"),
    )
    assert verify_audit(a, [], PUBLIC).findings[0].problem == (
        "records 1..5 are not covered by a signed batch"
    )


def test_damaged_rows_are_reported_not_raised() -> None:
    a = chain("dev-a", 3)
    a[1]["seq"] = "two"
    a[2]["data"] = float("nan")
    report = verify_audit(a, [batch(chain("dev-a", 3), 3)], PUBLIC)
    assert not report.ok


def test_each_device_is_reported_separately() -> None:
    a, b = chain("dev-a", 3), chain("dev-b", 3)
    b[0]["ts"] = "2030-01-01T00:00:00.000000Z"
    report = verify_audit(a + b, [batch(a, 3), batch(chain("dev-b", 3), 3)], PUBLIC)
    assert {f.device_id for f in report.findings} == {"dev-b"}
    assert report.findings[0].seq == 1


# -- property: any single-field change of any record is caught at or right after it --

FIELDS = ("device_id", "seq", "ts", "kind", "task_id", "data", "prev_hash", "hash")
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
replacement = {
    "device_id": st.text(min_size=1, max_size=8),
    "seq": st.integers(0, 40),
    "ts": st.text(max_size=30),
    "kind": st.text(max_size=10),
    "task_id": st.none() | st.text(max_size=8),
    "data": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    "prev_hash": hexes,
    "hash": hexes,
}


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, int, str, Any]:
    length = draw(st.integers(1, 12))
    index = draw(st.integers(0, length - 1))
    field = draw(st.sampled_from(FIELDS))
    value = draw(replacement[field])
    return length, index, field, value


BASE = chain("dev-a", 12)


@settings(max_examples=300, deadline=None)
@given(mutations())
def test_any_single_field_change_is_named(mutation: tuple[int, int, str, Any]) -> None:
    length, index, field, value = mutation
    records = copy.deepcopy(BASE[:length])
    assume(records[index][field] != value)
    records[index][field] = value
    seq = index + 1
    report = verify_audit(records, [batch(BASE, length)], PUBLIC)
    assert not report.ok
    named = {f.seq for f in report.findings if f.device_id == "dev-a"}
    # A changed seq moves the record: it may be named by its new number instead.
    allowed = {seq, seq + 1} | ({value} if field == "seq" else set())
    assert named & allowed, report.findings


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_is_covered(field: str) -> None:
    records = copy.deepcopy(BASE[:4])
    records[1][field] = {"seq": 9, "task_id": "zzz"}.get(field, "zz")
    assert not verify_audit(records, [batch(BASE, 4)], PUBLIC).ok
