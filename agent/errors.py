"""Errors of the agent process.

    CoactError (coact.shared.errors)
    ├── AgentError            local setup problem (not enrolled, damaged files, bad policy)
    │   ├── EnrollmentError   the relay refused enrollment or could not be reached
    │   ├── RevokedError      the relay says this device is revoked: stop, do not retry
    │   └── DiskFullError     the agent's database cannot grow: refuse work until it can
    └── ActionError           (coact.agent.executors.errors) an action failed, with a code
"""

from __future__ import annotations

from coact.shared.errors import CoactError


class AgentError(CoactError):
    """The agent cannot run as configured; the message says what to do."""


class EnrollmentError(AgentError):
    pass


class RevokedError(AgentError):
    pass


class DiskFullError(AgentError):
    """SQLite answered SQLITE_FULL: nothing was written. The agent refuses new work
    (it could not journal or audit it) and keeps serving until a write succeeds."""
