"""The relay's Ed25519 keys for signing JWTs, with key ids and rotation.

One key is *active* and signs new tokens. :meth:`KeyRing.rotate` makes a new active
key and retires the old one: a retired key no longer signs but still verifies until
``verifies_until`` (its retirement time plus the overlap given to ``rotate``), so
tokens issued just before a rotation keep working until they expire. After that the
key is pruned from disk.

On disk (one directory, mode 0700)::

    index.json        {"version": 1, "active": kid, "keys": [{kid, created_at, ...}]}
    <kid>.pem         PKCS#8 private key, mode 0600

``index.json`` is the commit point: it is replaced atomically after the key files it
names are on disk, so a crash leaves either the old ring or the new one. The ring
assumes one writer per directory; relays sharing keys must share the directory
through something that serialises writers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from coact.shared import keys as shared_keys
from coact.shared.clock import Clock, from_rfc3339, to_rfc3339
from coact.shared.errors import CoactError, SignatureError

INDEX_NAME = "index.json"
INDEX_VERSION = 1
KID_CHARS = 16
# Kids we mint are 16 base64url characters; anything else in an index is corruption.
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")


class KeyRingError(CoactError):
    """The key directory is unsafe, corrupt or inconsistent."""


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 key of the ring.

    ``retired_at`` is when it stopped signing (None while active); ``verifies_until``
    is when tokens it signed stop being accepted (None while active).
    """

    kid: str
    private_key: Ed25519PrivateKey
    created_at: datetime
    retired_at: datetime | None
    verifies_until: datetime | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def verifies_at(self, moment: datetime) -> bool:
        return self.verifies_until is None or moment < self.verifies_until


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def kid_for(public: Ed25519PublicKey) -> str:
    """Key id derived from the key itself, so a kid can never name another key."""
    return _b64url(hashlib.sha256(_raw_public(public)).digest())[:KID_CHARS]


def _new_key(now: datetime) -> SigningKey:
    private_key = shared_keys.generate_private_key()
    return SigningKey(
        kid=kid_for(private_key.public_key()),
        private_key=private_key,
        created_at=now,
        retired_at=None,
    )


class KeyRing:
    """The relay's signing keys. Build it with :meth:`load_or_create`."""

    def __init__(
        self, directory: Path, clock: Clock, signing_keys: list[SigningKey], active_kid: str
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._keys: dict[str, SigningKey] = {key.kid: key for key in signing_keys}
        self._active_kid = active_kid
        if active_kid not in self._keys or self._keys[active_kid].retired_at is not None:
            raise KeyRingError(f"active key {active_kid!r} is missing or retired")

    # -- loading and saving ---------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: Path, clock: Clock) -> KeyRing:
        """Load the ring in ``directory``; create the directory and a first key if new.

        An existing but broken ring raises :class:`KeyRingError` rather than being
        replaced: a fresh key would silently change the relay identity that agents pin
        and invalidate every live token.
        """
        directory = Path(directory)
        _ensure_private_directory(directory)
        index_path = directory / INDEX_NAME
        if not index_path.exists():
            if any(directory.glob("*.pem")):
                raise KeyRingError(
                    f"{directory} holds key files but no {INDEX_NAME}; refusing to "
                    "create a new key ring over them"
                )
            key = _new_key(clock.now())
            ring = cls(directory, clock, [key], key.kid)
            _write_key_file(directory, key)
            _write_index(directory, ring._keys, ring._active_kid)
            return ring
        ring = cls._load(directory, clock, index_path)
        ring._prune()
        return ring

    @classmethod
    def _load(cls, directory: Path, clock: Clock, index_path: Path) -> KeyRing:
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            if index.get("version") != INDEX_VERSION:
                raise KeyRingError(f"{index_path}: unsupported version {index.get('version')!r}")
            active_kid = index["active"]
            entries = index["keys"]
            signing_keys = [cls._load_entry(directory, entry) for entry in entries]
        except KeyRingError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyRingError(f"{index_path} is unreadable or malformed: {exc}") from exc
        return cls(directory, clock, signing_keys, active_kid)

    @staticmethod
    def _load_entry(directory: Path, entry: dict[str, Any]) -> SigningKey:
        kid = entry["kid"]
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise KeyRingError(f"key index names a malformed kid {kid!r}")
        path = directory / f"{kid}.pem"
        _check_private_file(path)
        try:
            private_key = shared_keys.private_key_from_pem(path.read_bytes())
        except SignatureError as exc:
            raise KeyRingError(f"{path}: {exc}") from exc
        if kid_for(private_key.public_key()) != kid:
            # The file was swapped or the index edited: never sign under a kid that
            # names a different key.
            raise KeyRingError(f"{path} does not hold the key with kid {kid}")

        def when(name: str) -> datetime | None:
            value = entry.get(name)
            return None if value is None else from_rfc3339(value)

        created_at = when("created_at")
        if created_at is None:
            raise KeyRingError(f"key {kid} has no created_at")
        return SigningKey(
            kid=kid,
            private_key=private_key,
            created_at=created_at,
            retired_at=when("retired_at"),
            verifies_until=when("verifies_until"),
        )

    def _prune(self) -> None:
        """Forget keys past their overlap: index first, then files, so a crash in
        between leaves only a harmless orphan file."""
        now = self._clock.now()
        expired = [key for key in self._keys.values() if not key.verifies_at(now)]
        if not expired:
            return
        kept = {kid: key for kid, key in self._keys.items() if key.verifies_at(now)}
        _write_index(self._directory, kept, self._active_kid)
        self._keys = kept
        for key in expired:
            with contextlib.suppress(FileNotFoundError):
                (self._directory / f"{key.kid}.pem").unlink()

    # -- use ------------------------------------------------------------------------

    def active(self) -> SigningKey:
        return self._keys[self._active_kid]

    def signing_keys(self) -> list[SigningKey]:
        """Every key still in the ring, active first (some may be past their overlap
        until the next prune; :meth:`verification_key` ignores those)."""
        return sorted(self._keys.values(), key=lambda k: (k.kid != self._active_kid, k.created_at))

    def verification_key(self, kid: str) -> Ed25519PublicKey | None:
        """Public key for ``kid`` if it is in this ring and still verifies, else None.

        ``kid`` comes from an untrusted token header: it is only ever a dictionary key,
        never joined into a path or fetched.
        """
        if not isinstance(kid, str):
            return None
        key = self._keys.get(kid)
        if key is None or not key.verifies_at(self._clock.now()):
            return None
        return key.public_key

    def rotate(self, overlap: timedelta) -> SigningKey:
        """Make a new active key; the old one verifies for ``overlap`` more.

        ``overlap`` should cover the longest token lifetime plus clock leeway, or
        tokens issued just before the rotation are refused before they expire.
        """
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        now = self._clock.now()
        new = _new_key(now)
        old = self.active()
        updated = dict(self._keys)
        updated[old.kid] = replace(old, retired_at=now, verifies_until=now + overlap)
        updated[new.kid] = new
        # Key file before index: the index must never name a file that is not there.
        # Memory changes only once both are on disk.
        _write_key_file(self._directory, new)
        _write_index(self._directory, updated, new.kid)
        self._keys = updated
        self._active_kid = new.kid
        self._prune()
        return new

    def jwks(self) -> dict[str, Any]:
        """RFC 7517/8037 JWK Set of the keys that still verify, active first."""
        now = self._clock.now()
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(_raw_public(key.public_key)),
                    "kid": key.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                }
                for key in self.signing_keys()
                if key.verifies_at(now)
            ]
        }

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` fingerprint of the active public key (what an agent pins)."""
        return shared_keys.fingerprint(shared_keys.public_key_b64(self.active().private_key))


# -- files ------------------------------------------------------------------------------


def _write_key_file(directory: Path, key: SigningKey) -> None:
    _atomic_write(directory / f"{key.kid}.pem", shared_keys.private_key_to_pem(key.private_key))


def _write_index(directory: Path, ring_keys: dict[str, SigningKey], active_kid: str) -> None:
    def when(moment: datetime | None) -> str | None:
        return None if moment is None else to_rfc3339(moment)

    index = {
        "version": INDEX_VERSION,
        "active": active_kid,
        "keys": [
            {
                "kid": key.kid,
                "created_at": to_rfc3339(key.created_at),
                "retired_at": when(key.retired_at),
                "verifies_until": when(key.verifies_until),
            }
            for key in ring_keys.values()
        ],
    }
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / INDEX_NAME, text.encode("utf-8"))


def _ensure_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name != "posix":
        return
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        # Anyone else who can write here can swap in their own signing key.
        raise KeyRingError(
            f"{directory} is writable by group or others (mode {mode:o}); use mode 0700"
        )
    if mode != 0o700:
        # mkdir's mode is filtered by the umask and an existing directory keeps its own;
        # tighten it so key material is not even listable by others.
        os.chmod(directory, 0o700)


def _check_private_file(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError as exc:
        raise KeyRingError(f"key file {path} is missing") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KeyRingError(f"key file {path} is not a regular file")
    if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyRingError(
            f"key file {path} is readable or writable by others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); it must be 0600"
        )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temp file and rename, so readers
    and crashes see the old file or the new one, never half of one."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            # mkstemp already creates 0600; say so explicitly, it is the point here.
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
