"""Errors raised by ``coact.policy``.

    CoactError                      (coact.shared.errors)
    ├── PolicyError     a policy document is invalid; the message starts with the
    │                   TOML key path of the problem, e.g. ``rules[2].effect: ...``
    └── ParamsError     a task's params do not match its action's spec; the message
                        names the parameter, e.g. ``params.path: required``

``decide`` and ``assess`` never raise these for bad task input: a task with an unknown
action or bad params is denied (or rated critical) with the error's message as the
reason. ``validate_params`` and ``parse_policy`` raise them for callers that want to
refuse input outright (the relay's API, ``coact policy check``).
"""

from __future__ import annotations

from coact.shared.errors import CoactError


class PolicyError(CoactError):
    """A policy document does not parse or breaks a rule of the format."""


class ParamsError(CoactError):
    """A task's params do not match the ``ActionSpec`` of its action."""
