"""The agent's local policy as loaded, and loaded again when it changes.

The policy file is read at start-up and again on SIGHUP (``coact agent reload``) or
when the file changes on disk (its size, modification time or inode, checked every
``AgentOptions.policy_poll_s``). A new policy that does not parse, or that fails the
checks of :meth:`coact.agent.config.DataDir.policy` (roots reaching the agent's own
files, roots or the file writable by others), is refused and the previous one stays
in force: a typo must never leave a device with no policy, or a looser one. Each
reload and each refusal is an audit record with the file's SHA-256, so the audit
trail says which policy decided every task after it. A task already running keeps
the policy it was decided under.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from coact.agent.config import DataDir
from coact.agent.errors import AgentError
from coact.policy.document import Policy

Stamp = tuple[int, int, int]


def _stamp(data_dir: DataDir) -> Stamp | None:
    try:
        st = os.stat(data_dir.policy_path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(data_dir: DataDir) -> str | None:
    try:
        return hashlib.sha256(data_dir.policy_path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass
class Reload:
    """What one reload did: ``kind`` is the audit record's (``policy.reloaded``,
    ``policy.reload_failed``) or None when the file's content had not changed."""

    kind: str | None
    data: dict[str, str | None]


class PolicyFile:
    """The policy in force and what it was loaded from."""

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        self.policy: Policy = data_dir.policy()  # AgentError at start-up: the agent does not start
        self.stamp = _stamp(data_dir)
        self.sha256 = _digest(data_dir)
        self.error: str | None = None

    def changed_on_disk(self) -> bool:
        return _stamp(self.data_dir) != self.stamp

    def reload(self) -> Reload:
        """Load the file again (blocking: run it in a thread). The stamp is taken
        before the read, so a change made while reading is seen at the next check."""
        stamp, sha256 = _stamp(self.data_dir), _digest(self.data_dir)
        try:
            policy = self.data_dir.policy()
        except AgentError as exc:
            self.stamp, self.error = stamp, str(exc)
            return Reload("policy.reload_failed", {"sha256": sha256, "kept_sha256": self.sha256, "error": str(exc)})
        self.stamp, self.error = stamp, None
        if sha256 == self.sha256:
            return Reload(None, {"sha256": sha256})
        previous, self.policy, self.sha256 = self.sha256, policy, sha256
        return Reload("policy.reloaded", {"sha256": sha256, "previous_sha256": previous})
