"""Errors raised by the agent's action executors.

    CoactError                       (coact.shared.errors)
    └── ActionError                  an action could not be performed; ``code`` says why

``code`` is a short, stable, machine-readable string that travels in the task
result next to the human-readable message. The file executors use:

    invalid_params   a parameter is malformed (relative path, NUL byte, '..', bad base64)
    outside_roots    the path is not under an allowed read/write root
    root_refused     the action would delete, move or replace an allowed root itself
    symlink_refused  a symbolic link was met below an allowed root
    protected        the action would reach the agent's own files (data dir, key, db, policy)
    root_unsafe      the root is owned by another user or writable by group or others
    not_found        the path (or its parent directory) does not exist
    exists           the destination exists and overwrite was not requested
    is_directory     a file was expected, a directory was found
    not_directory    a directory was expected (or a path component is not one)
    not_empty        a directory is not empty and recursive was not requested
    not_regular      the path is a device, FIFO or socket
    not_text         the content is not valid UTF-8 (use encoding="base64")
    too_large        the content exceeds the configured write limit
    too_deep         a recursive delete went deeper than the executor allows
    permission_denied the operating system refused access
    io_error         any other operating-system error
    unsupported      the platform or the operation is not supported
    stopped          the task's time ran out and the executor stopped (:class:`Stopped`)
    timed_out        the task's time ran out (:class:`TimedOut`, raised by ``execute``)
"""

from __future__ import annotations

from typing import Any

from coact.shared.errors import CoactError


class ActionError(CoactError):
    """An action failed for a reason the end user can read and act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ActionError({self.code!r}, {self.message!r})"


class Stopped(ActionError):
    """The executor saw its cancel flag and stopped between two steps; ``progress``
    says exactly what it had done by then (what was deleted, how much was written)."""

    def __init__(self, message: str, progress: dict[str, Any]) -> None:
        super().__init__("stopped", message)
        self.progress = progress


class TimedOut(ActionError):
    """The task ran out of time. ``progress`` is what the executor reported doing
    before it stopped, or None if it did not stop within the grace period (then what
    it did is not known, and the message says so)."""

    def __init__(self, message: str, progress: dict[str, Any] | None) -> None:
        super().__init__("timed_out", message)
        self.progress = progress
