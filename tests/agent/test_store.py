"""AgentStore: the audit outbox keeps one gap-free chain; the journal runs a task once."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coact.agent.store import SCHEMA_VERSION, AgentStore
from coact.shared.canonical import canonical_json
from coact.shared.chain import GENESIS, ChainHead, verify_chain
from coact.shared.errors import CanonicalizationError

DEVICE = "dev-1"


class StepClock:
    """A clock that moves one millisecond each time it is read."""

    def __init__(self) -> None:
        self._now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            self._now += timedelta(milliseconds=1)
            return self._now

    def monotonic(self) -> float:
        return self._now.timestamp()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[AgentStore]:
    with AgentStore(db_path, DEVICE, StepClock()) as opened:
        yield opened


def test_new_store_starts_at_genesis(store: AgentStore) -> None:
    assert store.audit_head() == GENESIS
    assert store.pending_count() == 0
    assert store.pending_audit(10) == []


def test_schema_is_versioned_and_durable(store: AgentStore, db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_newer_schema_is_refused(db_path: Path) -> None:
    AgentStore(db_path, DEVICE, StepClock()).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        AgentStore(db_path, DEVICE, StepClock())


def test_append_builds_a_verifiable_chain(store: AgentStore) -> None:
    first = store.append_audit("agent.started", {"version": "0.1.0"})
    second = store.append_audit("task.started", {"action": "file.list"}, task_id="t1")
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["prev_hash"] == first["hash"]
    assert first["ts"] == "2026-01-02T03:04:05.001000Z"
    assert store.audit_head() == ChainHead(2, second["hash"])
    pending = store.pending_audit(10)
    assert pending == [first, second]
    assert verify_chain(pending, device_id=DEVICE) == ChainHead(2, second["hash"])


def test_pending_audit_is_oldest_first_and_limited(store: AgentStore) -> None:
    for n in range(5):
        store.append_audit("tick", {"n": n})
    assert [r["seq"] for r in store.pending_audit(3)] == [1, 2, 3]
    assert store.pending_audit(0) == []
    with pytest.raises(ValueError, match="negative"):
        store.pending_audit(-1)


def test_pending_batch_is_the_stored_canonical_text_and_its_head(store: AgentStore) -> None:
    assert store.pending_batch(10, 1 << 20) is None
    records = [store.append_audit("tick", {"n": n, "text": "é\n"}) for n in range(5)]
    batch = store.pending_batch(3, 1 << 20)
    assert batch is not None
    assert batch.records == [canonical_json(r).decode() for r in records[:3]]
    assert batch.head == ChainHead(3, records[2]["hash"])
    store.ack_audit(3, records[2]["hash"])
    rest = store.pending_batch(10, 1 << 20)
    assert rest is not None
    assert [json.loads(text) for text in rest.records] == records[3:]
    with pytest.raises(ValueError, match="at least 1"):
        store.pending_batch(0, 1 << 20)


def test_pending_batch_stays_within_the_byte_budget(store: AgentStore) -> None:
    records = [store.append_audit("tick", {"text": "é" * 500}) for _ in range(4)]
    sizes = [len(canonical_json(r)) + 1 for r in records]  # bytes, not characters
    budget = sizes[0] + sizes[1] + sizes[2] - 1
    batch = store.pending_batch(10, budget)
    assert batch is not None
    assert len(batch.records) == 2
    assert batch.head == ChainHead(2, records[1]["hash"])
    # A first record larger than the budget still goes alone, never an empty batch.
    alone = store.pending_batch(10, 10)
    assert alone is not None
    assert len(alone.records) == 1


def test_chain_continues_across_close_and_reopen(db_path: Path) -> None:
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        store.append_audit("a")
        second = store.append_audit("b")
        store.ack_audit(2, second["hash"])
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        # The outbox is empty, but the head is remembered: no fork back to genesis.
        assert store.pending_count() == 0
        assert store.audit_head() == ChainHead(2, second["hash"])
        third = store.append_audit("c")
    assert third["seq"] == 3
    assert third["prev_hash"] == second["hash"]


def test_ack_deletes_up_to_last_seq(store: AgentStore) -> None:
    records = [store.append_audit("tick", {"n": n}) for n in range(4)]
    assert store.ack_audit(2, records[1]["hash"]) == 2
    assert [r["seq"] for r in store.pending_audit(10)] == [3, 4]
    assert store.pending_count() == 2
    assert store.audit_head() == ChainHead(4, records[3]["hash"])


def test_ack_with_wrong_hash_deletes_nothing(store: AgentStore) -> None:
    records = [store.append_audit("tick", {"n": n}) for n in range(3)]
    with pytest.raises(ValueError, match="seq 2"):
        store.ack_audit(2, records[2]["hash"])
    with pytest.raises(ValueError, match="seq 9"):
        store.ack_audit(9, records[2]["hash"])
    assert store.pending_count() == 3


def _synchronous(store: AgentStore) -> int:
    return int(store._db.execute("PRAGMA synchronous").fetchone()[0])


def test_acks_commit_without_waiting_for_the_disk_and_everything_else_waits(store: AgentStore) -> None:
    records = store.append_audit_many([("k", {"i": i}, None) for i in range(3)])
    assert store.begin_task("tsk_1", {"id": "tsk_1"}) == "new"
    store.finish_task("tsk_1", {"task_id": "tsk_1", "status": "succeeded"})
    statements: list[str] = []
    store._db.conn.set_trace_callback(statements.append)
    store.ack_audit(records[-1]["seq"], records[-1]["hash"])
    store.ack_result("tsk_1")
    assert statements.count("PRAGMA synchronous=NORMAL") == 2
    assert statements[-1] == "PRAGMA synchronous=FULL"
    assert _synchronous(store) == 2  # FULL again for the appends and journal writes
    # A refused ack changes nothing and leaves the store waiting for the disk too.
    store.append_audit("k", {"i": 3})
    with pytest.raises(ValueError, match="names hash"):
        store.ack_audit(4, "0" * 64)
    assert _synchronous(store) == 2
    assert store.pending_count() == 1


def test_repeated_ack_is_a_no_op_but_a_stale_unknown_one_is_refused(store: AgentStore) -> None:
    records = [store.append_audit("tick", {"n": n}) for n in range(3)]
    assert store.ack_audit(2, records[1]["hash"]) == 2
    assert store.ack_audit(2, records[1]["hash"]) == 0
    with pytest.raises(ValueError, match="seq 1"):
        store.ack_audit(1, records[0]["hash"])
    assert store.pending_count() == 1


def test_uncanonical_data_raises_and_writes_nothing(store: AgentStore) -> None:
    store.append_audit("ok")
    with pytest.raises(CanonicalizationError):
        store.append_audit("bad", {"value": float("nan")})
    assert store.pending_count() == 1
    assert store.audit_head().seq == 1
    assert store.append_audit("next")["seq"] == 2


def test_append_many_is_all_or_nothing(store: AgentStore) -> None:
    made = store.append_audit_many([("a", {"n": 1}, None), ("b", None, "t1")])
    assert [r["seq"] for r in made] == [1, 2]
    with pytest.raises(CanonicalizationError):
        store.append_audit_many([("c", {"n": 3}, None), ("d", {"x": float("inf")}, None)])
    assert store.pending_count() == 2
    assert store.audit_head() == ChainHead(2, made[1]["hash"])


def test_concurrent_appends_form_one_gap_free_chain(store: AgentStore) -> None:
    threads, per_thread = 8, 40
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                store.append_audit("tick", {"worker": worker, "n": n})
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    records = store.pending_audit(threads * per_thread + 1)
    assert len(records) == threads * per_thread
    assert verify_chain(records, device_id=DEVICE) == store.audit_head()


def test_begin_task_is_idempotent_across_reopen(db_path: Path) -> None:
    spec = {"id": "t1", "action": "file.list", "params": {"path": "/tmp"}, "timeout_s": 5}
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        assert store.begin_task("t1", spec) == "new"
        assert store.begin_task("t1", spec) == "running"
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        assert store.begin_task("t1", spec) == "running"
        assert store.interrupted_tasks() == ["t1"]
        store.finish_task("t1", {"task_id": "t1", "status": "failed", "ok": False})
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        assert store.begin_task("t1", spec) == "done"
        assert store.interrupted_tasks() == []
        assert store.task_result("t1") == {"task_id": "t1", "status": "failed", "ok": False}


def test_concurrent_begin_task_lets_exactly_one_caller_run(store: AgentStore) -> None:
    barrier = threading.Barrier(6)
    answers: list[str] = []

    def work() -> None:
        barrier.wait()
        answers.append(store.begin_task("t1", {"id": "t1"}))

    pool = [threading.Thread(target=work) for _ in range(6)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sorted(answers) == ["new"] + ["running"] * 5


def test_finish_task_rules(store: AgentStore) -> None:
    with pytest.raises(KeyError):
        store.finish_task("ghost", {"ok": True})
    store.begin_task("t1", {})
    assert store.task_result("t1") is None
    store.finish_task("t1", {"ok": True})
    with pytest.raises(ValueError, match="already finished"):
        store.finish_task("t1", {"ok": False})
    assert store.task_result("t1") == {"ok": True}


def test_journal_writes_carry_their_audit_records_or_none(store: AgentStore) -> None:
    received = ("task.received", {"action": "file.stat"}, "t1")
    assert store.begin_task("t1", {}, [received]) == "new"
    assert store.begin_task("t1", {}, [received]) == "running"  # a redelivery audits nothing here
    finished = ("action.finished", {"ok": True}, "t1")
    store.finish_task("t1", {"ok": True}, [finished])
    with pytest.raises(ValueError, match="already finished"):
        store.finish_task("t1", {"ok": False}, [finished])
    records = store.pending_audit(10)
    assert [(r["kind"], r["task_id"]) for r in records] == [("task.received", "t1"), ("action.finished", "t1")]
    assert verify_chain(records, start=GENESIS, device_id=store.device_id).seq == 2


def test_results_wait_for_ack_in_finish_order(db_path: Path) -> None:
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        for task_id in ("a", "b", "c"):
            store.begin_task(task_id, {})
        store.finish_task("c", {"task_id": "c"})
        store.finish_task("a", {"task_id": "a"})
        store.finish_task("b", {"task_id": "b"})
        store.ack_result("a")
    with AgentStore(db_path, DEVICE, StepClock()) as store:
        assert store.unacked_results() == [{"task_id": "c"}, {"task_id": "b"}]
        store.ack_result("c")
        store.ack_result("b")
        assert store.unacked_results() == []
        # Acked results are still journaled: a redelivery is refused.
        assert store.begin_task("a", {}) == "done"


def test_empty_device_id_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="device_id"):
        AgentStore(db_path, "", StepClock())
