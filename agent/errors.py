"""Errors of the agent process.

    CoactError (coact.shared.errors)
    ├── AgentError            local setup problem (not enrolled, damaged files, bad policy)
    │   ├── EnrollmentError   the relay refused enrollment or could not be reached
    │   └── RevokedError      the relay says this device is revoked: stop, do not retry
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
