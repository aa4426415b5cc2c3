"""The agent's task runner against a real journal, policy and executor."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakes import FakeClock

from coact.agent.frames import TaskSpec
from coact.agent.store import AgentStore
from coact.agent.tasks import MAX_OUTPUT_BYTES, TaskRunner, returnable_output_error
from coact.policy.document import parse_policy, render_sandbox_policy


def runner(tmp_path: Path) -> tuple[TaskRunner, AgentStore, Path]:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    store = AgentStore(tmp_path / "agent.db", "dev_x", FakeClock())
    return TaskRunner(store, parse_policy(render_sandbox_policy(str(sandbox))), FakeClock()), store, sandbox


async def test_a_redelivery_racing_the_first_delivery_does_not_run_or_settle_it(tmp_path: Path) -> None:
    tasks, store, sandbox = runner(tmp_path)
    spec = TaskSpec(id="tsk_1", action="file.write", params={"path": str(sandbox / "a.txt"), "content": "x"},
                    timeout_s=5)
    first, second = await asyncio.gather(tasks.handle(spec), tasks.handle(spec))
    assert first is not None
    assert first["status"] == "succeeded"
    assert second is None  # the result follows from the first delivery
    again = await tasks.handle(spec)
    assert again == first  # answered from the journal, not run again
    assert [r["kind"] for r in store.pending_audit(100)].count("action.started") == 1
    store.close()


async def test_a_task_left_running_by_a_dead_process_is_reported_not_rerun(tmp_path: Path) -> None:
    tasks, store, sandbox = runner(tmp_path)
    spec = TaskSpec(id="tsk_2", action="file.write", params={"path": str(sandbox / "b.txt"), "content": "x"},
                    timeout_s=5)
    assert store.begin_task(spec.id, spec.as_dict()) == "new"  # as if the agent died right here
    result = await tasks.handle(spec)
    assert result is not None
    assert result["status"] == "failed"
    assert "interrupted" in result["error"]
    assert not (sandbox / "b.txt").exists()
    store.close()


def _statements(store: AgentStore) -> list[str]:
    """Every SQL statement the store runs from now on (sqlite3's trace callback)."""
    seen: list[str] = []
    store._db.conn.set_trace_callback(seen.append)
    return seen


async def test_a_task_that_runs_commits_twice_its_receipt_decision_and_start_together(tmp_path: Path) -> None:
    tasks, store, sandbox = runner(tmp_path)
    statements = _statements(store)
    spec = TaskSpec(id="tsk_3", action="file.write", params={"path": str(sandbox / "c.txt"), "content": "x"},
                    timeout_s=5)
    result = await tasks.handle(spec)
    assert result is not None
    assert result["status"] == "succeeded"
    # Each commit waits for the disk: one for the journal entry, one for the result.
    assert statements.count("COMMIT") == 2
    first = statements[:statements.index("COMMIT")]
    assert sum(s.startswith("INSERT INTO audit_outbox") for s in first) == 3
    assert [r["kind"] for r in store.pending_audit(100)] == [
        "task.received", "policy.decision", "action.started", "action.finished"]
    store.close()


async def test_a_denied_task_journals_its_decision_with_the_receipt(tmp_path: Path) -> None:
    tasks, store, _sandbox = runner(tmp_path)
    statements = _statements(store)
    outside = tmp_path / "outside.txt"
    spec = TaskSpec(id="tsk_4", action="file.write", params={"path": str(outside), "content": "x"}, timeout_s=5)
    result = await tasks.handle(spec)
    assert result is not None
    assert result["status"] == "denied"
    assert not outside.exists()
    assert statements.count("COMMIT") == 2
    assert [r["kind"] for r in store.pending_audit(100)] == ["task.received", "policy.decision"]
    store.close()


def test_outputs_that_cannot_go_back_in_a_result_frame_are_named() -> None:
    assert returnable_output_error({"ratio": 0.5, "text": "é"}) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert "NaN or Infinity" in str(returnable_output_error({"ratio": [1, bad]}))
    assert "too large" in str(returnable_output_error("x" * (MAX_OUTPUT_BYTES + 1)))


def _kinds(store: AgentStore, task_id: str) -> list[str]:
    return [r["kind"] for r in store.pending_audit(1000) if r["task_id"] == task_id]


def _fill(store: AgentStore) -> None:
    """Give the agent's database no room to grow: a real SQLITE_FULL on the next write
    that needs a page (the same error a full disk gives)."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def _make_room(store: AgentStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


async def test_a_task_whose_params_cannot_be_journaled_fails_audited_and_the_runner_goes_on(tmp_path: Path) -> None:
    """Issue 14: an integer beyond the canonical-JSON range made begin_task raise, and
    the exception ended the agent with nothing journaled or audited."""
    tasks, store, sandbox = runner(tmp_path)
    bad = TaskSpec(id="tsk_big", action="app.close", params={"pid": 100000000000000000001}, timeout_s=5)
    result = await tasks.handle(bad)
    assert result is not None
    assert result["status"] == "failed"
    assert result["error"].startswith("refused, not run: CanonicalizationError")
    assert store.task_result("tsk_big") == result  # journaled: a redelivery is answered, not run
    failed = [r for r in store.pending_audit(1000) if r["kind"] == "task.failed"]
    assert [(r["task_id"], r["data"]["action"]) for r in failed] == [("tsk_big", "app.close")]
    good = TaskSpec(id="tsk_ok", action="file.write", params={"path": str(sandbox / "a"), "content": "x"}, timeout_s=5)
    assert (await tasks.handle(good) or {})["status"] == "succeeded"
    store.close()


async def test_a_malformed_expiry_fails_the_task_not_the_agent(tmp_path: Path) -> None:
    tasks, store, sandbox = runner(tmp_path)
    spec = TaskSpec(id="tsk_exp", action="file.write", params={"path": str(sandbox / "a"), "content": "x"},
                    timeout_s=5, expires_at="next tuesday")
    result = await tasks.handle(spec)
    assert result is not None
    assert result["status"] == "failed"
    assert "refused, not run" in result["error"]
    assert not (sandbox / "a").exists()
    assert _kinds(store, "tsk_exp") == ["task.failed"]
    store.close()


async def test_a_full_disk_refuses_tasks_unrun_and_work_resumes_when_space_returns(tmp_path: Path) -> None:
    tasks, store, sandbox = runner(tmp_path)
    _fill(store)
    spec = TaskSpec(id="tsk_full", action="file.write", params={"path": str(sandbox / "a"), "content": "x" * 5000},
                    timeout_s=5)
    result = await tasks.handle(spec)
    assert result is not None
    assert result["status"] == "failed"
    assert result["error"].startswith("refused, not run: disk full")
    assert not (sandbox / "a").exists()
    assert store.full is not None
    assert store.full.startswith("disk full")
    assert store.task_result("tsk_full") is None  # nothing half-written
    _make_room(store)
    again = await tasks.handle(spec)
    assert again is not None
    assert again["status"] == "succeeded"
    assert (sandbox / "a").read_text() == "x" * 5000
    assert store.full is None
    store.close()


async def test_a_task_interrupted_by_a_crash_gets_its_audit_record(tmp_path: Path) -> None:
    tasks, store, _sandbox = runner(tmp_path)
    store.begin_task("tsk_crash", {"id": "tsk_crash"})  # as if the agent died mid-run
    await tasks.settle_interrupted()
    finished = [r for r in store.pending_audit(100) if r["kind"] == "action.finished"]
    assert [(r["task_id"], r["data"]["status"], r["data"]["interrupted"]) for r in finished] == [
        ("tsk_crash", "failed", True)]
    store.close()


async def test_a_timed_out_delete_stops_and_reports_exactly_what_it_deleted(tmp_path: Path) -> None:
    """The timeout stops the work, not just the report: once the result is in, the
    files on disk match what it says was done (before, the delete went on in its
    thread after the task was reported timed out, and the result said nothing)."""
    tasks, store, sandbox = runner(tmp_path)
    tree = sandbox / "tree"
    for d in range(30):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (tree / f"d{d}" / f"f{f}").write_bytes(b"")
    total = 30 * 100 + 30 + 1

    def left() -> int:
        return sum(1 for _ in tree.rglob("*")) + tree.exists()

    spec = TaskSpec(id="tsk_slow", action="file.delete", params={"path": str(tree), "recursive": True},
                    timeout_s=0.001)
    result = await tasks.handle(spec)
    assert result is not None
    remaining = left()
    if result["status"] == "succeeded":
        assert remaining == 0
    else:
        assert result["status"] == "timed_out"
        assert result["output"]["complete"] is False
        assert remaining == total - result["output"]["deleted"]
        assert "was stopped after" in result["error"]
        finished = [r for r in store.pending_audit(100) if r["kind"] == "action.finished"]
        assert finished[-1]["data"]["progress"] == result["output"]
    store.close()
