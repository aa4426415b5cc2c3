"""Hash-chained audit records and the one signature that seals a batch of them.

A record is ``{device_id, seq, ts, kind, task_id, data, prev_hash, hash}``; ``seq``
starts at 1 and has no gaps, ``prev_hash`` is the previous record's ``hash`` (64
zeros for the first), and ``hash`` is the SHA-256 of the canonical JSON of every
other field. A batch carries one Ed25519 signature over ``(device_id, last_seq,
head_hash)``: since every hash covers its predecessor, signing the head seals the
whole chain up to it.

The same functions serve the agent (append, sign), the relay (verify on ingest) and
``coact audit verify`` (re-check from raw rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.shared import keys
from coact.shared.canonical import canonical_json, sha256_hex
from coact.shared.errors import (
    CanonicalizationError,
    ChainError,
    ChainForkError,
    ChainGapError,
    SignatureError,
)

GENESIS_HASH = "0" * 64
RECORD_FIELDS = ("device_id", "seq", "ts", "kind", "task_id", "data", "prev_hash", "hash")
BATCH_PURPOSE = "coact.audit.batch.v1"


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of a chain: the next record has ``seq + 1`` and ``prev_hash == hash``."""

    seq: int
    hash: str


GENESIS = ChainHead(0, GENESIS_HASH)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of every field but ``hash``; KeyError
    when a field is missing."""
    return hash_record(record)[0]


def hash_record(record: Mapping[str, Any]) -> tuple[str, bytes]:
    """The record's hash and the canonical JSON of its ``data``, which is part of
    what is hashed: the relay stores that text, so it is encoded once."""
    encoded = canonical_json({
        "data": record["data"], "device_id": record["device_id"], "kind": record["kind"],
        "prev_hash": record["prev_hash"], "seq": record["seq"], "task_id": record["task_id"], "ts": record["ts"],
    })
    # "data" sorts first, so the text is {"data":<data>,"device_id":... . Inside a
    # JSON string a quote is escaped, so the last ,"device_id": is the one after data.
    return sha256_hex(encoded), encoded[8:encoded.rindex(b',"device_id":')]


def make_record(
    head: ChainHead,
    *,
    device_id: str,
    kind: str,
    ts: str,
    data: Mapping[str, Any] | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Return the record that follows ``head`` (its ``hash`` filled in)."""
    record: dict[str, Any] = {
        "device_id": device_id,
        "seq": head.seq + 1,
        "ts": ts,
        "kind": kind,
        "task_id": task_id,
        "data": dict(data or {}),
        "prev_hash": head.hash,
    }
    # Canonicalising here, not at upload, means a value with no canonical form fails
    # where it was produced instead of poisoning the outbox.
    record["hash"] = record_hash(record)
    return record


def verify_chain(
    records: Iterable[Mapping[str, Any]], *, start: ChainHead = GENESIS, device_id: str | None = None,
    data_json: list[bytes] | None = None,
) -> ChainHead:
    """Check that ``records`` continue the chain ending at ``start``; return the new head.

    Raises :class:`ChainGapError` when the first record is not ``start.seq + 1`` and
    :class:`ChainError` (with ``seq``) naming the first record that does not verify.
    With ``data_json``, the canonical JSON of each verified record's ``data`` is
    appended to it (what the relay stores).
    """
    # Plain locals, not a ChainHead per record: this loop runs once per audit record
    # the relay ingests.
    head_seq, head_hash = start.seq, start.hash
    for record in records:
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ChainError(f"record after seq {head_seq} has no integer seq", seq=head_seq + 1)
        if seq != head_seq + 1:
            if head_seq == start.seq:
                raise ChainGapError(
                    f"chain continues at seq {head_seq + 1}, batch starts at {seq}",
                    expected_seq=head_seq + 1,
                )
            raise ChainError(f"seq {seq} follows {head_seq}: records missing or reordered", seq=seq)
        if device_id is not None and record.get("device_id") != device_id:
            raise ChainError(f"record {seq} belongs to another device", seq=seq)
        if record.get("prev_hash") != head_hash:
            raise ChainError(f"record {seq} does not link to record {head_seq}", seq=seq)
        try:
            (actual, data), claimed = hash_record(record), record["hash"]
        except KeyError:
            missing = [name for name in RECORD_FIELDS if name not in record]
            raise ChainError(f"record {seq} lacks {', '.join(missing)}", seq=seq) from None
        except CanonicalizationError as exc:
            # Reachable from the wire: a parsed batch may carry an int beyond 2**53.
            raise ChainError(f"record {seq} has no canonical form: {exc}", seq=seq) from exc
        if actual != claimed:
            raise ChainError(f"record {seq} was altered: its hash does not match its content", seq=seq)
        if data_json is not None:
            data_json.append(data)
        head_seq, head_hash = seq, claimed
    return start if head_seq == start.seq else ChainHead(head_seq, head_hash)


def check_overlap(stored: Mapping[int, str], records: Iterable[Mapping[str, Any]]) -> None:
    """Raise :class:`ChainForkError` if a record re-uses a stored seq with another hash."""
    for record in records:
        known = stored.get(record["seq"])
        if known is not None and known != record["hash"]:
            raise ChainForkError(
                f"seq {record['seq']} is stored with hash {known[:12]}…, "
                f"batch brings {str(record['hash'])[:12]}…",
                seq=record["seq"],
            )


def batch_message(device_id: str, last_seq: int, head_hash: str) -> bytes:
    return canonical_json(
        {"purpose": BATCH_PURPOSE, "device_id": device_id, "last_seq": last_seq, "head_hash": head_hash}
    )


def sign_batch(key: Ed25519PrivateKey, device_id: str, head: ChainHead) -> str:
    return keys.sign(key, batch_message(device_id, head.seq, head.hash))


def verify_batch_signature(public_key: str, device_id: str, head: ChainHead, signature: str) -> None:
    try:
        keys.verify(public_key, batch_message(device_id, head.seq, head.hash), signature)
    except SignatureError as exc:
        raise ChainError(f"batch signature for seq {head.seq} does not verify", seq=head.seq) from exc
