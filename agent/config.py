"""The agent's data directory: identity, pinned relay, policy and local database.

    DATA_DIR/
      device.key      Ed25519 private key (0600), never leaves the device
      identity.json   device id, org id, relay URL and the pinned relay identity key
      policy.toml     the local policy (default deny) — see docs/policy.md
      agent.db        SQLite: audit outbox and task journal
      state.json      written by `coact agent run` for `coact agent status`
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.agent.errors import AgentError
from coact.policy.document import Policy, parse_policy
from coact.policy.errors import PolicyError
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

    def policy(self) -> Policy:
        try:
            return parse_policy(self.policy_path.read_text())
        except FileNotFoundError as exc:
            raise AgentError(
                f"no policy at {self.policy_path}: write one with `coact policy init` (every action is denied without it)"
            ) from exc
        except PolicyError as exc:
            raise AgentError(f"{self.policy_path}: {exc}") from exc


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
