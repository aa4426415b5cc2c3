"""AuditStore against the real embedded ClickHouse engine (chDB).

chDB runs one engine path per process at a time (a second path is refused while a
client of the first is open), so this module opens ONE store, on one path, for all
its tests and closes it at the end; tests keep apart by using their own org ids.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.relay import audit_store
from coact.relay.audit_store import _BATCH_TYPES, _RECORD_TYPES, AuditStore, parse_url
from coact.shared import keys
from coact.shared.auditcheck import Finding, verify_audit
from coact.shared.chain import GENESIS, ChainHead, make_record, sign_batch, verify_chain

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = keys.public_key_b64(KEY)
_orgs = itertools.count(1)


@pytest.fixture(scope="module")
def store(audit_store: AuditStore) -> AuditStore:
    return audit_store  # conftest.py; the SQL below names its database, coact_audit


@pytest.fixture
def org() -> str:
    return f"org-{next(_orgs)}"


def chain(device_id: str, n: int, start: ChainHead = GENESIS) -> list[dict[str, Any]]:
    head, out = start, []
    for _ in range(n):
        i = head.seq + 1
        record = make_record(
            head,
            device_id=device_id,
            kind="task.finished" if i % 3 == 0 else "tick",
            ts=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000000Z",
            data={"n": i, "nested": {"ok": True, "list": [1, "two", None]}, "big": 2**53 - 1},
            task_id=f"task-{i % 3}" if i % 2 else None,
        )
        head = ChainHead(record["seq"], record["hash"])
        out.append(record)
    return out


def put(store: AuditStore, org_id: str, records: list[dict[str, Any]]) -> None:
    last = records[-1]
    device_id = last["device_id"]
    signature = sign_batch(KEY, device_id, ChainHead(last["seq"], last["hash"]))
    store.insert_batch(org_id, records, signature, PUBLIC_KEY)


def head(store: AuditStore, org_id: str, device_id: str) -> ChainHead:
    return store.heads({org_id: [device_id]})[(org_id, device_id)]


def test_parse_url() -> None:
    assert parse_url("chdb:///var/lib/coact/audit") == ("chdb:///var/lib/coact/audit", "default")
    assert parse_url("chdb:///data?database=audit") == ("chdb:///data", "audit")
    assert parse_url("http://u:p@ch.example:8123/audit") == ("http://u:p@ch.example:8123", "audit")
    assert parse_url("https://ch.example:8443") == ("https://ch.example:8443", "default")
    for bad in ("chdb://relative/path", "postgres://x/y", "http://h/db;drop", "/just/a/path"):
        with pytest.raises(ValueError, match="URL|database"):
            parse_url(bad)


def test_ensure_schema_is_idempotent(store: AuditStore) -> None:
    store.ensure_schema()
    store.ensure_schema()


@pytest.mark.parametrize(("table", "declared"), [("audit_records", _RECORD_TYPES), ("audit_batches", _BATCH_TYPES)])
def test_inserts_name_the_types_the_tables_have(store: AuditStore, table: str, declared: dict[str, str]) -> None:
    # Inserts pass these types instead of asking the table; a type changed in the DDL
    # alone would otherwise be written in the wrong format.
    with store._guard() as client:
        result = client.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {table:String}",
            parameters={"db": store.database, "table": table},
        )
    actual = dict(result.result_rows)
    assert {name: actual.get(name) for name in declared} == declared


def _engine_settings(store: AuditStore) -> dict[str, str]:
    with store._guard() as client:
        rows = client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}", parameters={"db": store.database}
        ).result_rows
    return {name: engine for name, engine in rows}


def test_inserts_are_on_disk_when_they_return(store: AuditStore) -> None:
    # The relay acks a batch once inserted and the agent deletes its copy, so an
    # insert must survive a power cut (decision 43). Tables made before the setting
    # existed get it from ensure_schema.
    with store._guard() as client:
        client.command(f"ALTER TABLE `{store.database}`.audit_batches MODIFY SETTING fsync_after_insert = 0")
    assert "fsync_after_insert = 0" in _engine_settings(store)["audit_batches"]
    store.ensure_schema()
    for table in ("audit_records", "audit_batches"):
        engine = _engine_settings(store)[table]
        assert "fsync_after_insert = 1" in engine
        assert "fsync_part_directory = 1" in engine


def test_a_second_chdb_path_in_this_process_is_refused(store: AuditStore, tmp_path: Path) -> None:
    # Documents the chDB limit this module is designed around; if a chDB release
    # lifts it, this test says so.
    from coact.relay.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="already initialized"):
        AuditStore.open(f"chdb://{tmp_path}")


def test_records_round_trip_and_still_verify(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 6)
    put(store, org, records)
    stored = store.records(org)
    assert [{k: v for k, v in r.items() if k != "org_id"} for r in stored] == records
    assert {r["org_id"] for r in stored} == {org}
    assert verify_chain(stored, device_id="dev-1") == ChainHead(6, records[-1]["hash"])


def test_redelivered_batch_adds_no_rows(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 5)
    put(store, org, records)
    put(store, org, records)
    put(store, org, records[:3])
    put(store, org, records[:3])
    assert store.count(org) == 5
    assert [b["last_seq"] for b in store.batches(org)] == [3, 5]


def test_dedup_token_drops_the_repeated_block_itself(store: AuditStore, org: str) -> None:
    # Without FINAL, rows are counted as written: the token must have stopped the
    # second insert, not merely the ReplacingMergeTree collapsing it on read.
    records = chain("dev-1", 4)
    put(store, org, records)
    put(store, org, records)
    raw = store._client.query(
        "SELECT count() FROM coact_audit.audit_records WHERE org_id = {org:String}",
        parameters={"org": org},
    ).result_rows[0][0]
    assert raw == 4


def test_count_all_orgs(store: AuditStore, org: str) -> None:
    before = store.count()
    put(store, org, chain("dev-1", 3))
    assert store.count() == before + 3


def test_head_and_stored_hashes(store: AuditStore, org: str) -> None:
    assert head(store, org, "dev-1") == GENESIS
    first = chain("dev-1", 4)
    second = chain("dev-1", 3, start=ChainHead(4, first[-1]["hash"]))
    put(store, org, first)
    put(store, org, second)
    assert head(store, org, "dev-1") == ChainHead(7, second[-1]["hash"])
    assert head(store, org, "dev-2") == GENESIS
    assert store.stored_hashes(org, "dev-1", [2, 7, 99]) == {
        2: first[1]["hash"],
        7: second[-1]["hash"],
    }
    assert store.stored_hashes(org, "dev-1", []) == {}


def test_heads_of_many_chains_at_once(store: AuditStore, org: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_store, "HEADS_PER_QUERY", 2)  # several queries per org
    other = f"{org}-other"
    chains = {f"dev-{n}": chain(f"dev-{n}", n) for n in range(1, 6)}
    for records in chains.values():
        put(store, org, records)
    put(store, org, chains["dev-4"][2:])  # seq 3-4 stored twice (another batch split)
    put(store, other, chain("dev-1", 9))
    heads = store.heads({org: [*chains, "dev-none"], other: ["dev-1", "dev-2"]})
    assert heads == {
        **{(org, device): ChainHead(len(records), records[-1]["hash"]) for device, records in chains.items()},
        (org, "dev-none"): GENESIS,
        (other, "dev-1"): ChainHead(9, chain("dev-1", 9)[-1]["hash"]),
        (other, "dev-2"): GENESIS,
    }
    assert store.heads({}) == {}


def test_orgs_are_isolated(store: AuditStore, org: str) -> None:
    other = f"{org}-other"
    put(store, org, chain("dev-1", 2))
    put(store, other, chain("dev-9", 3))
    assert {r["device_id"] for r in store.records(org)} == {"dev-1"}
    assert store.records(org, device_id="dev-9") == []
    assert head(store, org, "dev-9") == GENESIS
    assert store.stored_hashes(org, "dev-9", [1]) == {}
    assert store.batches(org, "dev-9") == []
    assert store.count(org) == 2
    assert store.count(other) == 3


def test_keyset_pagination_walks_every_record_once(store: AuditStore, org: str) -> None:
    put(store, org, chain("dev-b", 7))
    put(store, org, chain("dev-a", 5))
    seen: list[tuple[str, int]] = []
    after = None
    while page := store.records(org, after=after, limit=3):
        seen.extend((r["device_id"], r["seq"]) for r in page)
        after = seen[-1]
    assert seen == [("dev-a", i) for i in range(1, 6)] + [("dev-b", i) for i in range(1, 8)]


def test_filters(store: AuditStore, org: str) -> None:
    put(store, org, chain("dev-1", 9))
    put(store, org, chain("dev-2", 2))
    assert [(r["device_id"], r["seq"]) for r in store.records(org, task_id="task-1")] == [
        ("dev-1", 1),
        ("dev-1", 7),
        ("dev-2", 1),
    ]
    assert [
        r["seq"] for r in store.records(org, device_id="dev-1", since="2026-01-01T00:00:08Z")
    ] == [8, 9]
    assert [r["seq"] for r in store.records(org, since="2026-01-01T01:00:07+01:00")] == [7, 8, 9]
    with pytest.raises(ValueError, match="limit"):
        store.records(org, limit=0)


def test_batches_are_listed_with_their_signature(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 3)
    put(store, org, records)
    (row,) = store.batches(org, "dev-1")
    assert row["last_seq"] == 3
    assert row["head_hash"] == records[-1]["hash"]
    assert row["public_key"] == PUBLIC_KEY
    assert row["received_at"].endswith("Z")


def test_malformed_batch_is_refused(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 3)
    with pytest.raises(ValueError, match="at least one"):
        store.insert_batch(org, [], "sig", PUBLIC_KEY)
    with pytest.raises(ValueError, match="consecutive"):
        store.insert_batch(org, [records[0], records[2]], "sig", PUBLIC_KEY)
    assert store.count(org) == 0


def test_sql_values_are_bound_not_formatted(store: AuditStore, org: str) -> None:
    hostile = "x' OR '1'='1"
    put(store, org, chain("dev-1", 2))
    assert store.records(hostile) == []
    assert store.records(org, device_id=hostile) == []
    assert store.count(hostile) == 0


def verify_org(store: AuditStore, org: str) -> tuple[Finding, ...]:
    report = verify_audit(
        store.records(org, limit=10_000), store.batches(org), {"dev-1": PUBLIC_KEY}
    )
    return report.findings


def test_stored_chain_verifies_client_side(store: AuditStore, org: str) -> None:
    put(store, org, chain("dev-1", 12))
    assert verify_org(store, org) == ()


def test_tampering_by_update_is_named(store: AuditStore, org: str) -> None:
    put(store, org, chain("dev-1", 20))
    store._client.command(
        "ALTER TABLE coact_audit.audit_records UPDATE data = {data:String} "
        "WHERE org_id = {org:String} AND device_id = 'dev-1' AND seq = 17",
        parameters={"data": '{"n":17,"approved_by":"mallory"}', "org": org},
        settings={"mutations_sync": 2},
    )
    findings = verify_org(store, org)
    assert findings[0] == Finding(
        "dev-1", 17, "record 17 was altered: its hash does not match its content"
    )


def test_tampering_by_replacement_row_is_named(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 10)
    put(store, org, records)
    forged = dict(records[4], kind="nothing.to.see", data='{"not": json')
    store._client.insert(
        "coact_audit.audit_records",
        [
            [
                org,
                "dev-1",
                5,
                forged["ts"],
                forged["kind"],
                None,
                forged["data"],
                forged["prev_hash"],
                forged["hash"],
            ]
        ],
        column_names=[
            "org_id",
            "device_id",
            "seq",
            "ts",
            "kind",
            "task_id",
            "data",
            "prev_hash",
            "hash",
        ],
    )
    assert store.count(org) == 10  # the replacement took seq 5's place under FINAL
    assert store.records(org, after=("dev-1", 4), limit=1)[0]["data"] == '{"not": json'
    assert verify_org(store, org)[0].seq == 5


def test_deleted_records_are_named(store: AuditStore, org: str) -> None:
    put(store, org, chain("dev-1", 8))
    store._client.command(
        "ALTER TABLE coact_audit.audit_records DELETE "
        "WHERE org_id = {org:String} AND seq IN (1, 2)",
        parameters={"org": org},
        settings={"mutations_sync": 2},
    )
    findings = verify_org(store, org)
    assert findings[0].seq == 1
    assert "earlier records are missing" in findings[0].problem


def test_same_chain_in_two_orgs_is_stored_in_both(store: AuditStore, org: str) -> None:
    records = chain("dev-1", 3)
    put(store, org, records)
    put(store, f"{org}-twin", records)
    assert store.count(org) == store.count(f"{org}-twin") == 3


def test_overlapping_rebatch_is_read_once(store: AuditStore, org: str) -> None:
    # A different batch boundary means a different dedup token; ReplacingMergeTree
    # plus FINAL still shows each seq once.
    records = chain("dev-1", 5)
    put(store, org, records[:3])
    put(store, org, records)
    assert store.count(org) == 5
    assert [r["seq"] for r in store.records(org)] == [1, 2, 3, 4, 5]
    assert verify_org(store, org) == ()


def test_batches_page_by_chain_and_last_seq(store: AuditStore, org: str) -> None:
    for device_id in ("dev-a", "dev-b"):
        records = chain(device_id, 6)
        for end in (2, 4, 6):
            put(store, org, records[:end])
    everything = [(b["device_id"], b["last_seq"]) for b in store.batches(org)]
    assert everything == [("dev-a", 2), ("dev-a", 4), ("dev-a", 6), ("dev-b", 2), ("dev-b", 4), ("dev-b", 6)]
    pages, after = [], None
    while True:
        page = [(b["device_id"], b["last_seq"]) for b in store.batches(org, after=after, limit=4)]
        pages.append(page)
        if len(page) < 4:
            break
        after = page[-1]
    assert [len(p) for p in pages] == [4, 2]
    assert [b for p in pages for b in p] == everything
    assert [b["last_seq"] for b in store.batches(org, "dev-b", after=("dev-b", 2), limit=1)] == [4]
