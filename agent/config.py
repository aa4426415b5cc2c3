"""The agent's data directory: identity, pinned relay, policy and local database.

    DATA_DIR/
      device.key      Ed25519 private key (0600), never leaves the device
      identity.json   device id, org id, relay URL and the pinned relay identity key
      policy.toml     the local policy (default deny) — see docs/policy.md
      agent.db        SQLite: audit outbox and task journal
      state.json      written by `coact agent run` for `coact agent status`

No action may reach these files, whatever the policy says (docs/SECURITY.md): the
policy the agent runs with carries their real paths as ``files.protected``, which the
file executors enforce on every object they touch, and a policy whose roots contain
them, lie inside them or are ``/`` is refused before the agent starts. So are roots
and policy files that someone other than the agent's user or root could change.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.agent.errors import AgentError
from coact.policy.document import Policy, parse_policy
from coact.policy.errors import PolicyError
from coact.policy.paths import flavor
from coact.shared import keys


@dataclass(frozen=True)
class Identity:
    device_id: str
    org_id: str
    relay_url: str
    relay_public_key: str
    relay_fingerprint: str
    name: str
    enrolled_at: str


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    key_path = property(lambda self: self.path / "device.key")
    identity_path = property(lambda self: self.path / "identity.json")
    policy_path = property(lambda self: self.path / "policy.toml")
    db_path = property(lambda self: self.path / "agent.db")
    state_path = property(lambda self: self.path / "state.json")

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def write_private_key(self, key: Ed25519PrivateKey) -> None:
        write_atomic(self.key_path, keys.private_key_to_pem(key), mode=0o600)

    def private_key(self) -> Ed25519PrivateKey:
        try:
            mode = self.key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise AgentError(f"{self.key_path} is readable by others (mode {mode:o}); run chmod 600 on it")
            return keys.private_key_from_pem(self.key_path.read_bytes())
        except FileNotFoundError as exc:
            raise AgentError(f"{self.path} holds no device key: enroll first with `coact agent enroll`") from exc

    def write_identity(self, identity: Identity) -> None:
        write_atomic(self.identity_path, json.dumps(asdict(identity), indent=2).encode(), mode=0o600)

    def identity(self) -> Identity:
        try:
            return Identity(**json.loads(self.identity_path.read_text()))
        except FileNotFoundError as exc:
            raise AgentError(f"{self.path} is not enrolled: run `coact agent enroll` first") from exc
        except (ValueError, TypeError) as exc:
            raise AgentError(f"{self.identity_path} is damaged: {exc}") from exc

    # The SQLite database's companions are journal and outbox as much as the file itself.
    _OWN_FILES = ("device.key", "identity.json", "policy.toml", "agent.db", "agent.db-wal",
                  "agent.db-shm", "agent.db-journal", "state.json")

    def protected_paths(self) -> tuple[str, ...]:
        """Real paths of the agent's own files: the directory, and any of its files that
        is a symlink to elsewhere (an admin's /etc/coact/policy.toml). Resolved now, so a
        relative --data-dir or one reached through a symlink means the same later.
        Files inside the directory are covered by it: listing each would cost every file
        action a realpath and a stat apiece."""
        home = os.path.realpath(self.path)
        paths = [home]
        for name in self._OWN_FILES:
            real = os.path.realpath(self.path / name)
            if not _within(real, home):
                paths.append(real)
        return tuple(dict.fromkeys(paths))

    def policy(self) -> Policy:
        """The local policy, bound to this directory's protected paths, or AgentError if
        it is missing, invalid, or could reach or be changed by what it must not."""
        try:
            with self.policy_path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                text = handle.read().decode("utf-8")
        except FileNotFoundError as exc:
            raise AgentError(
                f"no policy at {self.policy_path}: write one with `coact policy init` (every action is denied without it)"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentError(f"{self.policy_path} cannot be read: {exc}") from exc
        problems = [f"the policy file {self.policy_path} {why}" for why in _unsafe_owner(st)]
        problems += [f"the data directory {self.path} {why}" for why in _path_unsafe(self.path, ancestors=False)]
        try:
            policy = parse_policy(text)
        except PolicyError as exc:
            raise AgentError(f"{self.policy_path}: {exc}") from exc
        problems += root_problems(policy, self)
        if problems:
            raise AgentError(
                f"refusing the policy {self.policy_path}: " + "; ".join(problems)
                + ". Fix the roots (`coact policy init --force --sandbox DIR`) or the ownership and "
                "permissions (chown/chmod), then start the agent again"
            )
        return bind_protected(policy, self)


def bind_protected(policy: Policy, data_dir: DataDir) -> Policy:
    """``policy`` with the agent's own files as ``files.protected`` (see module docs)."""
    return replace(policy, files=replace(policy.files, protected=data_dir.protected_paths()))


def root_conflicts(policy: Policy, data_dir: DataDir) -> list[str]:
    """Why the policy's roots could reach the agent's own files: a root that is ``/``
    (also through a symlink), contains a protected path or lies inside one."""
    protected = data_dir.protected_paths()
    problems: list[str] = []
    for root in dict.fromkeys(policy.files.read_roots + policy.files.write_roots):
        if flavor(root) != "posix":
            continue  # a Windows root never matches on this device (see policy/paths.py)
        real = os.path.realpath(root)
        if real == "/":
            problems.append(f"the root {root} is the whole file system")
            continue
        for guarded in protected:
            if _within(guarded, real):
                problems.append(f"the root {root} contains the agent's own {guarded}")
                break
            if _within(real, guarded):
                problems.append(f"the root {root} lies inside the agent's own {guarded}")
                break
    return problems


def root_problems(policy: Policy, data_dir: DataDir) -> list[str]:
    """Everything wrong with the policy's roots: conflicts with the agent's own files,
    and roots (or their parents) that someone other than the agent's user or root could
    change or swap. A root that does not exist yet is checked when an action opens it."""
    problems = root_conflicts(policy, data_dir)
    for root in dict.fromkeys(policy.files.read_roots + policy.files.write_roots):
        if flavor(root) == "posix":
            problems += (f"the root {root}: {why}" for why in _path_unsafe(Path(os.path.realpath(root)), ancestors=True))
    return problems


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unsafe_owner(st: os.stat_result) -> list[str]:
    problems = []
    if st.st_uid not in (os.geteuid(), 0):
        problems.append(f"is owned by uid {st.st_uid}, not by the agent's user or root")
    if st.st_mode & 0o022:
        problems.append(f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
    return problems


def _path_unsafe(path: Path, *, ancestors: bool) -> list[str]:
    """Why someone other than the agent's user or root could change ``path``: its own
    owner and mode, and with ``ancestors`` each parent's (a parent writable by others
    lets them swap the directory for a symlink, unless it is sticky like /tmp)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"cannot be checked: {exc.strerror}"]
    problems = _unsafe_owner(st)
    if ancestors:
        for parent in path.parents:
            try:
                pst = os.stat(parent)
            except OSError:
                continue
            if pst.st_uid not in (os.geteuid(), 0):
                problems.append(f"its parent {parent} is owned by uid {pst.st_uid}, not by the agent's user or root")
            elif pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
                problems.append(f"its parent {parent} is writable by group or others and not sticky")
    return problems


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
