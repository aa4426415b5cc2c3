"""Decide whether a policy lets a device perform an action with given params.

``decide`` is the one place that answers "may this run?"; the relay calls it when a
task is created and the agent calls it again, with its own local policy, right
before it acts. It never raises for bad task input: an unknown action, bad params
or a path outside the roots is a ``deny`` with reasons a person can read.

The algorithm (also in ``docs/policy.md``):

1. Unknown action: deny.
2. Params that do not validate: deny, with the ``ParamsError`` message.
3. Deny reasons are gathered from every matching ``deny`` rule, every path param
   outside the roots (read paths against ``files.read_roots``, written paths
   against ``files.write_roots``) and a ``file.write`` payload above
   ``files.max_write_bytes``. Any deny reason: deny. Deny wins over everything.
4. A matching ``require_approval`` rule: needs_approval (it also permits the action).
5. A matching ``allow`` rule: allow.
6. Otherwise: deny, "no rule allows <action>" (default deny).

Path checks here are lexical (``coact.policy.paths``); the agent repeats them on the
real filesystem, where symlinks can point anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from coact.policy.actions import ACTIONS, ActionSpec
from coact.policy.document import Policy, Rule
from coact.policy.errors import ParamsError
from coact.policy.paths import is_within

__all__ = ["Decision", "Outcome", "decide", "is_within"]

Outcome = Literal["allow", "deny", "needs_approval"]


@dataclass(frozen=True)
class Decision:
    """The answer for one action: the outcome, why, and the rule that decided it.

    ``rule`` is the label of the deciding rule (its ``name``, else ``rules[i]``), or
    ``None`` when no rule decided: default deny, a path or size limit, bad input.
    """

    outcome: Outcome
    reasons: tuple[str, ...]
    rule: str | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def decide(policy: Policy, action: str, params: Mapping[str, Any]) -> Decision:
    """Apply ``policy`` to ``action`` with ``params``. Never raises for bad input."""
    spec = ACTIONS.get(action) if isinstance(action, str) else None
    if spec is None:
        return Decision("deny", (f"unknown action {action!r}",))
    try:
        normalized = spec.validate(params)
    except ParamsError as exc:
        return Decision("deny", (str(exc),))

    matching = [rule for rule in policy.rules if rule.matches(action)]
    denying = [rule for rule in matching if rule.effect == "deny"]

    reasons = [_rule_reason(rule, action) for rule in denying]
    reasons += _limit_violations(policy, spec, normalized)
    if reasons:
        return Decision("deny", tuple(reasons), denying[0].label if denying else None)

    for effect in ("require_approval", "allow"):
        chosen = [rule for rule in matching if rule.effect == effect]
        if chosen:
            outcome: Outcome = "needs_approval" if effect == "require_approval" else "allow"
            return Decision(
                outcome, tuple(_rule_reason(rule, action) for rule in chosen), chosen[0].label
            )
    return Decision("deny", (f"no rule allows {action}",))


def _rule_reason(rule: Rule, action: str) -> str:
    if rule.reason:
        return f"{rule.label}: {rule.reason}"
    verb = {"allow": "allows", "deny": "denies", "require_approval": "requires approval for"}
    return f"{rule.label} {verb[rule.effect]} {action}"


def _limit_violations(policy: Policy, spec: ActionSpec, params: Mapping[str, Any]) -> list[str]:
    """Why the params break the ``[files]`` limits (empty if they do not)."""
    files = policy.files
    found: list[str] = []
    for kind, names, roots in (
        ("read", spec.paths_read, files.read_roots),
        ("write", spec.paths_written, files.write_roots),
    ):
        for name in names:
            path = params[name]
            if not any(is_within(path, root) for root in roots):
                listed = ", ".join(roots) if roots else "none configured"
                found.append(f"path {path} is outside every {kind} root ({listed})")
    if spec.paths_written:
        size = spec.payload_size(params)
        if size is not None and size > files.max_write_bytes:
            found.append(
                f"{size} bytes to write exceeds files.max_write_bytes ({files.max_write_bytes})"
            )
    return found
