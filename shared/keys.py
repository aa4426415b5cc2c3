"""Ed25519 keys and signatures, in the encodings that cross the wire.

Public keys and signatures travel as standard base64 of their raw bytes (32 and 64
bytes). A key's fingerprint is ``SHA256:`` plus unpadded base64 of the SHA-256 of
the raw public key, the form OpenSSH shows for host keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from coact.shared.errors import SignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, expected_len: int | None = None, what: str = "value") -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise SignatureError(f"{what} is not valid base64") from exc
    if expected_len is not None and len(raw) != expected_len:
        raise SignatureError(f"{what} must be {expected_len} bytes, got {len(raw)}")
    return raw


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError("private key is not a PEM-encoded Ed25519 key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("private key is not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    raw = b64decode(text, expected_len=PUBLIC_KEY_BYTES, what="public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(public_key_text: str) -> str:
    """OpenSSH-style fingerprint of a base64 public key."""
    raw = b64decode(public_key_text, expected_len=PUBLIC_KEY_BYTES, what="public key")
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return b64encode(key.sign(message))


def verify(public_key_text: str, message: bytes, signature_text: str) -> None:
    """Raise :class:`SignatureError` unless ``signature_text`` signs ``message``."""
    public = public_key_from_b64(public_key_text)
    signature = b64decode(signature_text, expected_len=SIGNATURE_BYTES, what="signature")
    try:
        public.verify(signature, message)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc
