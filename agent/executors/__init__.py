"""Executors: the code that performs an action on this device, after policy allowed it.

``execute`` is the one entry point; each namespace lives in its own module and runs
in a worker thread, since file, GUI and serial work all block. A namespace's module
is imported when its first action runs, so an idle agent does not carry the code of
actions it has not been asked to perform (the file actions alone are ~1 MB resident).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

from coact.agent.executors.errors import ActionError, Stopped, TimedOut
from coact.policy.document import Policy

Executor = Callable[[str, Mapping[str, Any], Policy, threading.Event], dict[str, Any]]

# Implemented here, by namespace; the names are checked against each module in tests.
FILE_ACTIONS = (
    "file.list", "file.stat", "file.read", "file.write", "file.copy", "file.move", "file.delete", "file.hash",
)


def _files(action: str, params: Mapping[str, Any], policy: Policy, cancel: threading.Event) -> dict[str, Any]:
    from coact.agent.executors.files import FileRoots, run_file_action

    roots = FileRoots(
        read=policy.files.read_roots, write=policy.files.write_roots,
        max_write_bytes=policy.files.max_write_bytes, protected=policy.files.protected,
    )
    return run_file_action(action, params, roots, cancel)


def _system(action: str, params: Mapping[str, Any], policy: Policy, cancel: threading.Event) -> dict[str, Any]:
    from coact.agent.executors.system import system_info

    return system_info()


EXECUTORS: dict[str, Executor] = {name: _files for name in FILE_ACTIONS}
EXECUTORS["system.info"] = _system

# How long a timed-out executor gets to notice its cancel flag and say what it did.
# Every loop of a long executor checks the flag, so only a stuck system call (a hung
# network file system, say) takes this long.
STOP_GRACE_S = 10.0


async def execute(action: str, params: Mapping[str, Any], policy: Policy, timeout_s: float) -> dict[str, Any]:
    """Run the action in a worker thread, for at most ``timeout_s``.

    A thread cannot be interrupted from outside, so on time-out the executor's cancel
    flag is set and the thread is waited for (up to :data:`STOP_GRACE_S`): the work
    stops, not just the report of it, and :class:`TimedOut` carries what the executor
    says it had done. If this call is cancelled (the agent stopping), the flag is set too.
    """
    executor = EXECUTORS.get(action)
    if executor is None:
        raise ActionError("unsupported", f"{action} is not implemented by this agent yet")
    cancel = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(executor, action, params, policy, cancel))
    try:
        done, _ = await asyncio.wait({work}, timeout=timeout_s)
        if done:
            return work.result()
        cancel.set()
        done, _ = await asyncio.wait({work}, timeout=STOP_GRACE_S)
    except asyncio.CancelledError:
        cancel.set()
        raise
    if not done:
        raise TimedOut(
            f"did not finish within {timeout_s:g} s and had not stopped {STOP_GRACE_S:g} s later; "
            "what it did is not known", None,
        )
    try:
        return work.result()  # it finished just as time ran out: its result stands
    except Stopped as exc:
        raise TimedOut(f"did not finish within {timeout_s:g} s; {exc.message}", exc.progress) from exc
