"""Running one task on this device: journal, local policy, executor, result, audit.

The order is the safety argument: the task id is journaled *before* anything runs, so
a redelivery (after a reconnect or a crash) is recognised and never runs again; the
local policy is evaluated before every action, whatever the relay said; every step
leaves an audit record.

One task can never take the agent down (decision 49): :meth:`TaskRunner.handle` turns
any exception met while handling a task -- in the policy, the journal write, the
executor, the result -- into a failed result, journaled and audited as ``task.failed``
where the store can still write, and logged where it cannot (a full disk: the task is
refused, not run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from coact.agent.errors import DiskFullError
from coact.agent.executors import execute
from coact.agent.executors.errors import ActionError, TimedOut
from coact.agent.frames import TaskSpec
from coact.agent.store import AgentStore, AuditItem
from coact.policy.decision import Decision, decide
from coact.policy.document import Policy
from coact.shared.canonical import sha256_hex
from coact.shared.clock import Clock, from_rfc3339, to_rfc3339
from coact.shared.wire import MAX_FRAME_BYTES

log = logging.getLogger("coact.agent.tasks")

# Results travel in one WebSocket frame; leave room for the envelope.
MAX_OUTPUT_BYTES = MAX_FRAME_BYTES - 64 * 1024
# Long parameter values (file contents) are audited by digest, not copied.
AUDIT_INLINE_CHARS = 256
# A result's error must fit protocol.TaskResult.error.
MAX_ERROR_CHARS = 4096


def describe_failure(exc: BaseException) -> str:
    """``exc`` as text that can be journaled, audited and sent: bounded, and with any
    character that has no UTF-8 form (a lone surrogate) escaped."""
    text = f"{type(exc).__name__}: {exc}"[:1024]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _printable(text: str) -> str:
    return text[:64].encode("utf-8", "backslashreplace").decode("utf-8")


def audit_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, str) and len(value) > AUDIT_INLINE_CHARS:
            out[name] = {"sha256": sha256_hex(value.encode()), "chars": len(value)}
        else:
            out[name] = value
    return out


def returnable_output_error(output: Any) -> str | None:
    """Why ``output`` cannot go back in a result frame, or None if it can."""
    try:
        size = len(json.dumps(output, allow_nan=False))
    except ValueError:  # the relay refuses them (decision 42)
        return "output holds NaN or Infinity, which JSON has no form for"
    if size > MAX_OUTPUT_BYTES:
        return "output is too large to return (artifacts come later)"
    return None


class TaskRunner:
    def __init__(self, store: AgentStore, policy: Policy, clock: Clock) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.running: set[str] = set()

    async def audit(self, kind: str, data: Mapping[str, Any], task_id: str | None = None) -> None:
        await self.store.call(self.store.append_audit, kind, data, task_id)

    async def settle_interrupted(self) -> None:
        """Tasks a crash left mid-run are reported failed: running them again could act twice."""
        for task_id in await self.store.call(self.store.interrupted_tasks):
            await self._settle_interrupted(task_id)

    async def _settle_interrupted(self, task_id: str) -> dict[str, Any]:
        error = "interrupted: the agent stopped while this task ran; it is not run again"
        # Its action may have had its effect: the audit says it ended, and how.
        finished = ("action.finished", {"status": "failed", "ok": False, "error": error, "interrupted": True}, task_id)
        return await self._finish(task_id, self._result(task_id, "failed", None, error, None), [finished])

    async def handle(self, spec: TaskSpec) -> dict[str, Any] | None:
        """Run ``spec`` unless it ran before; return the result to send, or None to send nothing."""
        if spec.id in self.running:
            return None  # a redelivery while it runs: the result will follow
        # Claimed before the first await: a redelivery arriving meanwhile (a new
        # session after a relay restart) must see it as running, not as left over.
        self.running.add(spec.id)
        try:
            return await self._handle(spec)
        except Exception as exc:
            # The containment guard (module docs): this task fails, the agent goes on.
            log.exception("task %s failed inside the agent", spec.id)
            return await self._record_failure(spec, f"internal error: {describe_failure(exc)}")
        finally:
            self.running.discard(spec.id)

    async def _handle(self, spec: TaskSpec) -> dict[str, Any] | None:
        try:
            decision, journaled = self._plan(spec)
            state = await self.store.call(self.store.begin_task, spec.id, spec.as_dict(), journaled)
        except DiskFullError as exc:
            # Nothing was written and nothing can be: refuse it, unrun, and say why.
            log.error("task %s refused: %s", spec.id, exc)
            return self._result(spec.id, "failed", None, f"refused, not run: {exc}", None)
        except Exception as exc:
            log.exception("task %s could not be journaled", spec.id)
            return await self._record_failure(spec, f"refused, not run: {describe_failure(exc)}")
        if state == "done":
            await self.audit("task.redelivered", {"action": spec.action}, spec.id)
            return await self.store.call(self.store.task_result, spec.id)
        if state == "running":
            # Journaled by an earlier process that died before finishing it.
            return await self._settle_interrupted(spec.id)
        return await self._run(spec, decision)

    async def _record_failure(self, spec: TaskSpec, reason: str) -> dict[str, Any]:
        """Fail ``spec`` (journaled or not) with ``reason``, audited as ``task.failed``
        in the same transaction; if the store cannot write even that, log it: the
        result is still returned, so the relay hears of it."""
        action = _printable(spec.action)
        result = self._result(spec.id, "failed", None, reason[:MAX_ERROR_CHARS], None)
        try:
            state = await self.store.call(self.store.begin_task, spec.id, {"id": spec.id, "action": action})
            if state == "done":  # it had ended before the failure: its first result stands
                return await self.store.call(self.store.task_result, spec.id) or result
            await self._finish(spec.id, result, [("task.failed", {"action": action, "error": reason}, spec.id)])
        except Exception:
            log.exception("the failure of task %s could not be journaled; reporting it unjournaled", spec.id)
        return result

    def _plan(self, spec: TaskSpec) -> tuple[Decision | None, list[AuditItem]]:
        """The local policy's decision (None if the task has expired) and the records
        journaled with the task: its receipt, the decision and, if allowed, its start.
        The policy is pure, so it is decided before the journal write, and one
        transaction holds them all."""
        journaled: list[AuditItem] = [
            ("task.received", {"action": spec.action, "params": audit_params(spec.params)}, spec.id)
        ]
        if spec.expires_at is not None and from_rfc3339(spec.expires_at) <= self.clock.now():
            return None, journaled
        decision = decide(self.policy, spec.action, spec.params)
        journaled.append((
            "policy.decision",
            {"action": spec.action, "outcome": decision.outcome, "reasons": list(decision.reasons), "rule": decision.rule},
            spec.id,
        ))
        if decision.outcome == "allow":
            journaled.append(("action.started", {"action": spec.action}, spec.id))
        return decision, journaled

    async def _run(self, spec: TaskSpec, decision: Decision | None) -> dict[str, Any]:
        """Run a task just journaled with its receipt and ``decision`` (None: it had
        expired). Two writes for every task: that journal entry, then the result with
        the record of how it ended."""
        if decision is None:
            return await self._finish(spec.id, self._result(spec.id, "failed", None, "expired before it could run", None))
        if decision.outcome != "allow":
            why = "; ".join(decision.reasons)
            if decision.outcome == "needs_approval":
                why = f"needs approval, which this agent cannot verify yet: {why}"
            return await self._finish(spec.id, self._result(spec.id, "denied", None, f"denied by local policy: {why}", None))
        started = to_rfc3339(self.clock.now())
        output: Any = None
        progress: dict[str, Any] | None = None
        try:
            output = await execute(spec.action, spec.params, self.policy, spec.timeout_s)
            error = returnable_output_error(output)
            status, output = ("succeeded", output) if error is None else ("failed", None)
        except TimedOut as exc:
            # The work stopped (or is reported as not known to have); the output is
            # what it had done, and the audit says the same.
            status, error, output, progress = "timed_out", str(exc), exc.progress, exc.progress
        except ActionError as exc:
            status, error = "failed", f"{exc.code}: {exc}"
        except Exception as exc:  # an executor bug must not kill the agent: report and audit it
            log.exception("executor for %s failed", spec.action)
            status, error = "failed", f"internal error: {type(exc).__name__}"
        result = self._result(spec.id, status, output, error, started)
        data: dict[str, Any] = {
            "action": spec.action, "status": status, "ok": status == "succeeded", "error": error,
            "output_sha256": sha256_hex(json.dumps(output, sort_keys=True).encode()),
        }
        if status == "timed_out":
            data["progress"] = progress
        finished = ("action.finished", data, spec.id)
        try:
            return await self._finish(spec.id, result, [finished])
        except DiskFullError as exc:
            # It ran: report what it did. The journal still says running, so the next
            # start settles it as interrupted, with its audit record (never re-run).
            log.error("the result of task %s could not be journaled: %s", spec.id, exc)
            return result

    def _result(self, task_id: str, status: str, output: Any, error: str | None, started: str | None) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "status": status,
            "ok": status == "succeeded",
            "output": output,
            "error": error,
            "started_at": started,
            "finished_at": to_rfc3339(self.clock.now()),
        }

    async def _finish(self, task_id: str, result: dict[str, Any], audit: Sequence[AuditItem] = ()) -> dict[str, Any]:
        await self.store.call(self.store.finish_task, task_id, result, audit)
        return result
