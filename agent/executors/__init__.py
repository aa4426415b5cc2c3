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

from coact.agent.executors.errors import ActionError
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


async def execute(action: str, params: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """Run the action in a worker thread; if this call is cancelled (a timeout), tell the
    executor to stop, since a thread cannot be interrupted from outside."""
    executor = EXECUTORS.get(action)
    if executor is None:
        raise ActionError("unsupported", f"{action} is not implemented by this agent yet")
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(executor, action, params, policy, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise
