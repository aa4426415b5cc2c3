"""The audit pipeline: verify device batches and forward the relay's own events into
ClickHouse, acknowledging nothing before it is stored.

Ingest order for a device batch (DESIGN §5): records must belong to the sending
device; records at or below the stored head must match what is stored (else a fork,
a security event); the rest must continue the chain from the head with valid hashes;
the batch signature must verify with the device's enrolled key; then the rows are
inserted idempotently, the head advances by compare-and-set, and only then is the
batch acknowledged. A crash anywhere before the ack means the agent resends the
batch, and the idempotent insert keeps ClickHouse free of duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.relay.audit_store import AuditStore, SignedBatch
from coact.relay.errors import ServiceUnavailable
from coact.relay.storage import Row, Store
from coact.shared import keys
from coact.shared.chain import (
    GENESIS,
    ChainHead,
    check_overlap,
    sign_batch,
    verify_batch_signature,
    verify_chain,
)
from coact.shared.errors import ChainError, ChainForkError, ChainGapError
from coact.shared.protocol import MAX_AUDIT_BATCH, AuditAck, AuditNack

log = logging.getLogger("coact.relay.audit")


@dataclass
class _Insert:
    chain_id: str
    batch: SignedBatch
    old: ChainHead | None
    new: ChainHead
    done: asyncio.Future[bool]


class AuditPipeline:
    def __init__(self, store: Store, sink: AuditStore, relay_key: Ed25519PrivateKey, *, interval_s: float = 0.0) -> None:
        self.store = store
        self.sink = sink
        self.relay_key = relay_key
        self.relay_public_key = keys.public_key_b64(relay_key)
        self.interval_s = interval_s
        # chDB is one in-process engine: serialise access to it, off the event loop.
        self._sink_lock = asyncio.Lock()
        self._reconciled: set[str] = set()
        # Chain heads to look up in ClickHouse, and those found for callers still queued.
        self._wanted: dict[str, set[str]] = {}
        self._found: dict[tuple[str, str], ChainHead] = {}
        self._lookup_lock = asyncio.Lock()
        self._waiting: list[_Insert] = []
        self._waiting_rows = 0
        self._have_waiting = asyncio.Event()
        self._have_enough = asyncio.Event()

    async def run_inserter(self) -> None:
        """Insert verified batches, as many per ClickHouse insert as are waiting.

        While one insert runs, the next batches queue up and go in together: one part
        (and one round trip) per group instead of per batch. And an insert of fewer
        rows than a full batch starts at most once per ``interval_s`` (decision 46): a
        busy fleet sends a few records per task, and every insert makes a part (~20 ms
        of the embedded engine's CPU for a small one into both tables, then merged
        again later), so small batches arriving within the interval wait and share
        the next insert. The first batch after a quiet spell goes in at once. Each
        batch's chain head advances only after its rows are in, so the agent's ack
        waits too, not its tasks.
        """
        loop = asyncio.get_running_loop()
        last_start = -math.inf
        while True:
            await self._have_waiting.wait()
            wait_s = last_start + self.interval_s - loop.time()
            if self._waiting_rows < MAX_AUDIT_BATCH and wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._have_enough.wait(), wait_s)
            self._have_waiting.clear()
            self._have_enough.clear()
            group, self._waiting, self._waiting_rows = self._waiting, [], 0
            last_start = loop.time()
            try:
                await self._sink("insert_batches", [item.batch for item in group])
            except Exception as exc:
                log.error("audit insert of %d batches failed: %s", len(group), exc)
                for item in group:
                    item.done.set_exception(exc)
                    item.done.exception()  # each submitter re-raises it
                continue
            moved = await asyncio.gather(
                *(self.store.advance_audit_head(item.chain_id, item.batch.org_id, item.old, item.new)
                  for item in group),
                return_exceptions=True,
            )
            for item, outcome in zip(group, moved, strict=True):
                if isinstance(outcome, BaseException):
                    item.done.set_exception(outcome)
                    item.done.exception()
                else:
                    item.done.set_result(outcome)

    async def _insert(self, chain_id: str, batch: SignedBatch, old: ChainHead, new: ChainHead) -> bool:
        """Queue a verified batch for insertion; True once stored and the head advanced."""
        item = _Insert(chain_id, batch, None if old is GENESIS else old, new,
                       asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        self._waiting_rows += len(batch.records)
        self._have_waiting.set()
        if self._waiting_rows >= MAX_AUDIT_BATCH:
            self._have_enough.set()
        return await asyncio.shield(item.done)

    async def _sink(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self._sink_lock:
            return await asyncio.to_thread(getattr(self.sink, method), *args, **kwargs)

    async def _head(self, chain_id: str, org_id: str) -> ChainHead:
        """The chain's stored head, reconciled with ClickHouse once per chain per process.

        The head in the state database advances only after the ClickHouse insert; a
        relay that died between the two left rows in ClickHouse beyond the recorded
        head. Those rows were verified before insertion, so the first time this process
        sees the chain it moves the head up to them, and a redelivered batch then adds
        nothing instead of a second copy of its rows.
        """
        head = await self.store.audit_head(chain_id)
        if chain_id not in self._reconciled:
            stored = await self._stored_head(org_id, chain_id)
            if stored.seq > (head.seq if head else 0):
                log.info("audit chain %s: ClickHouse is ahead (%d > %s); adopting its head",
                         chain_id, stored.seq, head.seq if head else 0)
                if await self.store.advance_audit_head(chain_id, org_id, head, stored):
                    head = stored
                else:
                    # Moved meanwhile: by a batch of this chain stored while we looked
                    # (a device's old and new sessions overlap in a reconnect storm).
                    # Up to ClickHouse's head or beyond, that is where we were going.
                    head = await self.store.audit_head(chain_id)
                    if head is None or head.seq < stored.seq:
                        raise ChainError(f"chain head of {chain_id} moved back during reconciliation")
            self._reconciled.add(chain_id)
        return head or GENESIS

    async def _stored_head(self, org_id: str, chain_id: str) -> ChainHead:
        """The chain's head in ClickHouse. Chains asked for while a lookup waits for the
        engine are looked up with it, in one query: a fleet reconnecting after a relay
        restart sends thousands of first batches at once (one query each took ~2 ms of
        chDB time, every audit insert waiting behind them)."""
        key = (org_id, chain_id)
        self._wanted.setdefault(org_id, set()).add(chain_id)
        async with self._lookup_lock:
            found = self._found.pop(key, None)
            if found is not None:
                return found
            async with self._sink_lock:
                wanted, self._wanted = self._wanted, {}
                wanted.setdefault(org_id, set()).add(chain_id)  # again, if a cancelled lookup took it
                heads = await asyncio.to_thread(self.sink.heads, wanted)
            # The lock serves waiters in arrival order: those this lookup answered are
            # next, so the previous answers (of cancelled callers only) can go.
            self._found = heads
            return self._found.pop(key)

    async def ingest_device_batch(
        self, device: Row, records: Sequence[Mapping[str, Any]], signature: str, head: ChainHead | None = None
    ) -> tuple[AuditAck | AuditNack, ChainHead | None]:
        """Verify and store one batch of the device's chain; return the reply and the
        chain head after it (None after a refusal).

        ``head`` is the head returned for the previous batch of the same session, or
        None to read the stored one. A session may keep it because a device speaks on
        one link at a time and only its batches move its chain. Should the chain have
        moved anyway (the device went through another relay while this session stayed
        open), the batch shows a gap or loses the head's compare-and-set, and is
        checked again against the stored head before anything is answered.
        """
        device_id, org_id = device["id"], device["org_id"]
        foreign = next((r for r in records if r["device_id"] != device_id), None)
        if foreign is not None:
            await self.store.record_event(
                org_id, "security.foreign_audit", {"device_id": device_id, "claimed": foreign["device_id"]}
            )
            return AuditNack(code="foreign_record", detail=f"record {foreign['seq']} names another device"), None
        if head is not None:
            reply = await self._ingest(device, records, signature, head)
            if not (isinstance(reply, AuditNack) and reply.code in ("gap", "conflict")):
                return reply, self._head_after(reply, head)
        head = await self._head(device_id, org_id)
        reply = await self._ingest(device, records, signature, head)
        return reply, self._head_after(reply, head)

    @staticmethod
    def _head_after(reply: AuditAck | AuditNack, head: ChainHead) -> ChainHead | None:
        if isinstance(reply, AuditNack):
            return None
        return ChainHead(reply.last_seq, reply.head_hash) if reply.last_seq > head.seq else head

    async def _ingest(
        self, device: Row, records: Sequence[Mapping[str, Any]], signature: str, head: ChainHead
    ) -> AuditAck | AuditNack:
        device_id, org_id = device["id"], device["org_id"]
        stored = [r for r in records if r["seq"] <= head.seq]
        fresh = [r for r in records if r["seq"] > head.seq]
        try:
            if stored and not _ends_at_head(stored, head, device_id):
                known = await self._sink("stored_hashes", org_id, device_id, [r["seq"] for r in stored])
                check_overlap(known, stored)
            if not fresh:
                last = records[-1]
                return AuditAck(last_seq=last["seq"], head_hash=last["hash"])
            data_json: list[bytes] = []
            new_head = verify_chain(fresh, start=head, device_id=device_id, data_json=data_json)
            verify_batch_signature(device["public_key"], device_id, new_head, signature)
        except ChainForkError as exc:
            log.error("audit fork from %s: %s", device_id, exc)
            await self.store.record_event(org_id, "security.audit_fork", {"device_id": device_id, "seq": exc.seq, "detail": str(exc)})
            return AuditNack(code="fork", detail=str(exc), expected_seq=head.seq + 1)
        except ChainGapError as exc:
            return AuditNack(code="gap", detail=str(exc), expected_seq=exc.expected_seq)
        except ChainError as exc:
            log.warning("audit batch from %s refused: %s", device_id, exc)
            return AuditNack(code="invalid", detail=str(exc), expected_seq=head.seq + 1)
        try:
            stored_ok = await self._insert(
                device_id, SignedBatch(org_id, fresh, signature, device["public_key"], data_json), head, new_head
            )
        except (ServiceUnavailable, ClickHouseError, OSError) as exc:
            return AuditNack(code="unavailable", detail=f"audit store unavailable, resend later: {exc}",
                             expected_seq=head.seq + 1)
        if not stored_ok:
            return AuditNack(code="conflict", detail="chain head moved concurrently; resend", expected_seq=head.seq + 1)
        return AuditAck(last_seq=new_head.seq, head_hash=new_head.hash)

    async def forward_relay_events(self, limit: int = 1000) -> int:
        """Move this relay's chained events from the state database into ClickHouse."""
        rows = await self.store.pending_relay_events(limit)
        moved = 0
        for chain_id, group in groupby(rows, key=lambda r: r["chain_id"]):
            batch = list(group)
            org_id = batch[0]["org_id"]
            records = [r["record"] for r in batch]
            head = await self._head(chain_id, org_id)
            fresh = [r for r in records if r["seq"] > head.seq]
            if fresh:
                data_json: list[bytes] = []
                new_head = verify_chain(fresh, start=head, device_id=chain_id, data_json=data_json)
                signature = sign_batch(self.relay_key, chain_id, new_head)
                await self._insert(chain_id, SignedBatch(org_id, fresh, signature, self.relay_public_key, data_json),
                                   head, new_head)
            await self.store.drop_relay_events(chain_id, records[-1]["seq"])
            moved += len(batch)
        return moved

    async def run_forwarder(self, interval_s: float) -> None:
        while True:
            try:
                while await self.forward_relay_events() > 0:
                    pass
            except Exception:  # keep forwarding; the events stay in the outbox meanwhile
                log.exception("forwarding relay audit events failed; will retry")
            await asyncio.sleep(interval_s)

    async def records(self, org_id: str, **query: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._sink("records", org_id, **query)
        return result

    async def batches(self, org_id: str, device_id: str | None = None, *, after: tuple[str, int] | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._sink("batches", org_id, device_id, after=after, limit=limit)
        return result

    async def public_keys(self, org_id: str) -> dict[str, str]:
        keys_by_chain = await self.store.device_public_keys(org_id)
        keys_by_chain.update(await self.store.relay_chain_keys(org_id))
        return keys_by_chain

    async def ping(self) -> None:
        await self._sink("count", None)


def _ends_at_head(stored: Sequence[Mapping[str, Any]], head: ChainHead, device_id: str) -> bool:
    """True when the already-stored records of a batch end at the chain's head and
    verify as a chain: the last one's hash is the head's, and each hash covers the one
    before it, so every one of them is the stored record, and ClickHouse need not be
    asked (an agent resending its last batch after a lost or late ack; a fleet does
    that by the thousand when a relay restarts)."""
    last, first = stored[-1], stored[0]
    if last["seq"] != head.seq or last["hash"] != head.hash:
        return False
    try:
        verify_chain(stored, start=ChainHead(first["seq"] - 1, first.get("prev_hash", "")), device_id=device_id)
    except ChainError:
        return False
    return True
