"""AuditPipeline's inserter against a real state database and the real embedded
ClickHouse engine: small batches share an insert, full ones do not wait.

Merges are stopped on the records table, so its active parts count the inserts.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.relay.audit import AuditPipeline
from coact.relay.audit_store import AuditStore
from coact.relay.storage import Store
from coact.shared import keys
from coact.shared.chain import GENESIS, ChainHead, make_record, sign_batch
from coact.shared.clock import SystemClock
from coact.shared.protocol import AuditAck, AuditNack

INTERVAL_S = 3.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'relay.db'}", SystemClock(), "rly_pipeline",
                              keys.public_key_b64(Ed25519PrivateKey.generate()))
    yield opened
    await opened.close()


@pytest.fixture
async def pipeline(store: Store, audit_store: AuditStore) -> AsyncIterator[AuditPipeline]:
    audit = AuditPipeline(store, audit_store, Ed25519PrivateKey.generate(), interval_s=INTERVAL_S)
    inserter = asyncio.create_task(audit.run_inserter())
    yield audit
    inserter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inserter


def _active_parts(audit_store: AuditStore) -> int:
    with audit_store._guard() as client:
        return int(client.command(
            "SELECT count() FROM system.parts WHERE database = {db:String} AND table = 'audit_records' AND active",
            parameters={"db": audit_store.database},
        ))


def _stop_merges(audit_store: AuditStore) -> None:
    with audit_store._guard() as client:
        client.command(f"SYSTEM STOP MERGES `{audit_store.database}`.audit_records")


async def _device(store: Store) -> tuple[dict[str, Any], Ed25519PrivateKey]:
    user = await store.create_org_with_admin(f"p-{secrets.token_hex(4)}@example.com", "hash", "org")
    code = secrets.token_hex(32)
    await store.create_enrollment_code(user["org_id"], user["id"], code, [], ttl_s=600)
    key = Ed25519PrivateKey.generate()
    device = await store.enroll_device(code, "box", "linux", keys.public_key_b64(key))
    return device, key


def _batch(device_id: str, key: Ed25519PrivateKey, count: int) -> tuple[list[dict[str, Any]], str]:
    head, records = GENESIS, []
    for i in range(count):
        record = make_record(head, device_id=device_id, kind="test.tick", ts="2026-01-01T00:00:00.000000Z",
                             data={"i": i})
        head = ChainHead(record["seq"], record["hash"])
        records.append(record)
    return records, sign_batch(key, device_id, head)


async def test_small_batches_within_the_interval_share_one_insert(
    store: Store, audit_store: AuditStore, pipeline: AuditPipeline
) -> None:
    _stop_merges(audit_store)
    first, first_key = await _device(store)
    reply, _head = await pipeline.ingest_device_batch(first, *_batch(first["id"], first_key, 2))
    assert isinstance(reply, AuditAck)  # an insert just ran: the next small ones wait for the interval
    devices = [await _device(store) for _ in range(5)]
    before = _active_parts(audit_store)
    started = time.monotonic()
    replies = await asyncio.gather(*(
        pipeline.ingest_device_batch(device, *_batch(device["id"], key, 3)) for device, key in devices
    ))
    assert all(isinstance(reply, AuditAck) and reply.last_seq == 3 for reply, _head in replies)
    assert _active_parts(audit_store) - before == 1
    assert time.monotonic() - started < INTERVAL_S * 1.5  # one interval, not one per batch
    for device, _key in devices:
        assert [b["last_seq"] for b in audit_store.batches(device["org_id"], device["id"])] == [3]


async def test_a_small_batch_after_a_quiet_spell_goes_in_at_once(
    store: Store, audit_store: AuditStore, pipeline: AuditPipeline
) -> None:
    device, key = await _device(store)
    started = time.monotonic()
    reply, head = await pipeline.ingest_device_batch(device, *_batch(device["id"], key, 3))
    assert isinstance(reply, AuditAck)
    assert head == ChainHead(3, reply.head_hash)
    assert time.monotonic() - started < INTERVAL_S / 2


async def test_a_full_batch_does_not_wait_for_the_interval(
    store: Store, audit_store: AuditStore, pipeline: AuditPipeline
) -> None:
    small, small_key = await _device(store)
    await pipeline.ingest_device_batch(small, *_batch(small["id"], small_key, 1))  # starts an interval
    device, key = await _device(store)
    records, signature = _batch(device["id"], key, 1000)
    started = time.monotonic()
    reply, head = await pipeline.ingest_device_batch(device, records, signature)
    assert isinstance(reply, AuditAck)
    assert head == ChainHead(1000, records[-1]["hash"])
    assert time.monotonic() - started < INTERVAL_S / 2  # went in without waiting


class _CountingAuditStore(AuditStore):
    """The real store; counts the head lookups it is asked for."""

    lookups = 0

    def heads(self, chains: Any) -> Any:
        type(self).lookups += 1
        return super().heads(chains)


async def test_a_new_relay_adopts_clickhouse_heads_for_many_chains_in_few_lookups(
    store: Store, audit_store: AuditStore
) -> None:
    """Rows that reached ClickHouse before a relay died, their heads not yet recorded in
    the state database: the next process adopts them the first time each chain sends,
    and the first batches of a reconnecting fleet share the lookups."""
    devices = [await _device(store) for _ in range(12)]
    nexts = []
    for device, key in devices:
        records, _signature = _batch(device["id"], key, 6)
        first, rest = records[:4], records[4:]
        audit_store.insert_batch(device["org_id"], first, sign_batch(key, device["id"], ChainHead(4, first[-1]["hash"])),
                                 keys.public_key_b64(key))
        assert await store.audit_head(device["id"]) is None  # the relay died here
        nexts.append((device, rest, sign_batch(key, device["id"], ChainHead(6, rest[-1]["hash"]))))
    counting = _CountingAuditStore(audit_store._client, audit_store.database)  # the same engine, counted
    audit = AuditPipeline(store, counting, Ed25519PrivateKey.generate())
    inserter = asyncio.create_task(audit.run_inserter())
    try:
        replies = await asyncio.gather(*(audit.ingest_device_batch(d, rest, sig) for d, rest, sig in nexts))
    finally:
        inserter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inserter
    assert all(isinstance(reply, AuditAck) and reply.last_seq == 6 for reply, _head in replies)
    for device, rest, _sig in nexts:
        assert await store.audit_head(device["id"]) == ChainHead(6, rest[-1]["hash"])
        assert [r["seq"] for r in audit_store.records(device["org_id"], device_id=device["id"])] == [1, 2, 3, 4, 5, 6]
    assert 1 <= _CountingAuditStore.lookups < len(devices) / 2


class _HeldLookupAuditStore(AuditStore):
    """The real store; its head lookup says it was asked, then waits until the test
    lets it answer."""

    asked = threading.Event()
    answer = threading.Event()

    def heads(self, chains: Any) -> Any:
        type(self).asked.set()
        assert type(self).answer.wait(30)
        return super().heads(chains)


async def test_reconciling_a_chain_whose_head_moves_meanwhile_goes_on_from_the_new_head(
    store: Store, audit_store: AuditStore
) -> None:
    """A fleet reconnecting in a storm: a device's new session sends its first batch
    while a batch of its old one is being stored. The new session finds ClickHouse
    ahead of the state database and adopts its head, but the old batch's head moves
    first. That is no conflict (the head moved to where ClickHouse is) and the new
    batch is stored, not refused with an error."""
    device, key = await _device(store)
    records, _signature = _batch(device["id"], key, 6)
    first, rest = records[:4], records[4:]
    audit_store.insert_batch(device["org_id"], first, sign_batch(key, device["id"], ChainHead(4, first[-1]["hash"])),
                             keys.public_key_b64(key))
    held = _HeldLookupAuditStore(audit_store._client, audit_store.database)  # the same engine
    audit = AuditPipeline(store, held, Ed25519PrivateKey.generate())
    inserter = asyncio.create_task(audit.run_inserter())
    try:
        ingest = asyncio.create_task(audit.ingest_device_batch(
            device, rest, sign_batch(key, device["id"], ChainHead(6, rest[-1]["hash"]))))
        assert await asyncio.to_thread(_HeldLookupAuditStore.asked.wait, 30)  # the new session looks
        # Meanwhile the old session's batch (1-4) finishes: its head advances.
        assert await store.advance_audit_head(device["id"], device["org_id"], None, ChainHead(4, first[-1]["hash"]))
        _HeldLookupAuditStore.answer.set()
        reply, head = await ingest
    finally:
        _HeldLookupAuditStore.answer.set()
        inserter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inserter
    assert isinstance(reply, AuditAck), reply
    assert reply.last_seq == 6
    assert head == ChainHead(6, rest[-1]["hash"])
    assert await store.audit_head(device["id"]) == head
    assert [r["seq"] for r in audit_store.records(device["org_id"], device_id=device["id"])] == [1, 2, 3, 4, 5, 6]


class _OverlapCountingAuditStore(AuditStore):
    """The real store; counts the lookups of already-stored records."""

    lookups = 0

    def stored_hashes(self, org_id: str, device_id: str, seqs: Any) -> Any:
        type(self).lookups += 1
        return super().stored_hashes(org_id, device_id, seqs)


async def test_a_resent_batch_ending_at_the_head_is_acked_without_asking_clickhouse(
    store: Store, audit_store: AuditStore
) -> None:
    counting = _OverlapCountingAuditStore(audit_store._client, audit_store.database)
    audit = AuditPipeline(store, counting, Ed25519PrivateKey.generate())
    inserter = asyncio.create_task(audit.run_inserter())
    try:
        device, key = await _device(store)
        records, signature = _batch(device["id"], key, 5)
        reply, head = await audit.ingest_device_batch(device, records, signature)
        assert isinstance(reply, AuditAck)
        # The ack was lost: the same batch again.
        reply, head = await audit.ingest_device_batch(device, records, signature, head)
        assert isinstance(reply, AuditAck)
        assert reply.last_seq == 5
        assert _OverlapCountingAuditStore.lookups == 0
        # Stored records that do not end at the head are checked in ClickHouse, and a
        # changed one is a fork.
        forged = [dict(r) for r in records[:3]]
        forged[1]["hash"] = "0" * 64
        reply, _ = await audit.ingest_device_batch(device, forged, signature, head)
        assert isinstance(reply, AuditNack)
        assert reply.code == "fork"
        assert _OverlapCountingAuditStore.lookups == 1
    finally:
        inserter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inserter
    assert [r["seq"] for r in audit_store.records(device["org_id"], device_id=device["id"])] == [1, 2, 3, 4, 5]
