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
