"""Ed25519 keys and signatures in their wire encodings."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key as rsa_key
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from coact.shared import keys
from coact.shared.errors import CoactError, SignatureError

MESSAGE = b"coact: run notepad.exe"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return keys.generate_private_key()


def test_sign_verify_round_trip(key: Ed25519PrivateKey) -> None:
    signature = keys.sign(key, MESSAGE)
    assert len(base64.b64decode(signature)) == keys.SIGNATURE_BYTES
    keys.verify(keys.public_key_b64(key), MESSAGE, signature)


def test_public_key_b64_accepts_private_or_public_key(key: Ed25519PrivateKey) -> None:
    text = keys.public_key_b64(key)
    assert keys.public_key_b64(key.public_key()) == text
    assert len(base64.b64decode(text)) == keys.PUBLIC_KEY_BYTES
    assert keys.public_key_b64(keys.public_key_from_b64(text)) == text


def test_wrong_key_fails(key: Ed25519PrivateKey) -> None:
    other = keys.generate_private_key()
    with pytest.raises(SignatureError, match="does not verify"):
        keys.verify(keys.public_key_b64(other), MESSAGE, keys.sign(key, MESSAGE))


def test_wrong_message_fails(key: Ed25519PrivateKey) -> None:
    signature = keys.sign(key, MESSAGE)
    with pytest.raises(SignatureError, match="does not verify"):
        keys.verify(keys.public_key_b64(key), MESSAGE + b"!", signature)


def test_flipped_signature_bit_fails(key: Ed25519PrivateKey) -> None:
    raw = bytearray(base64.b64decode(keys.sign(key, MESSAGE)))
    raw[10] ^= 0x01
    with pytest.raises(SignatureError, match="does not verify"):
        keys.verify(keys.public_key_b64(key), MESSAGE, keys.b64encode(bytes(raw)))


def test_truncated_signature_fails_on_length(key: Ed25519PrivateKey) -> None:
    raw = base64.b64decode(keys.sign(key, MESSAGE))
    with pytest.raises(SignatureError, match="signature must be 64 bytes, got 63"):
        keys.verify(keys.public_key_b64(key), MESSAGE, keys.b64encode(raw[:-1]))


def test_wrong_length_public_key(key: Ed25519PrivateKey) -> None:
    short = keys.b64encode(b"\x01" * 31)
    with pytest.raises(SignatureError, match="public key must be 32 bytes, got 31"):
        keys.verify(short, MESSAGE, keys.sign(key, MESSAGE))


@pytest.mark.parametrize(
    "bad",
    ["not base64!", "abc", "QUJD\n", " QUJD", "QUJD====", "ÄÖÜ", ""],
    ids=["punctuation", "unpadded", "newline", "space", "overpadded", "non-ascii", "empty"],
)
def test_bad_base64_signature(key: Ed25519PrivateKey, bad: str) -> None:
    with pytest.raises(SignatureError, match="signature"):
        keys.verify(keys.public_key_b64(key), MESSAGE, bad)


@pytest.mark.parametrize("bad", ["not base64!", "ÄÖÜ", ""])
def test_bad_base64_public_key(key: Ed25519PrivateKey, bad: str) -> None:
    with pytest.raises(SignatureError, match="public key"):
        keys.verify(bad, MESSAGE, keys.sign(key, MESSAGE))


def test_non_string_signature_is_a_signature_error(key: Ed25519PrivateKey) -> None:
    with pytest.raises(SignatureError):
        keys.verify(keys.public_key_b64(key), MESSAGE, None)  # type: ignore[arg-type]


def test_pem_round_trip(key: Ed25519PrivateKey) -> None:
    pem = keys.private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = keys.private_key_from_pem(pem)
    assert keys.public_key_b64(loaded) == keys.public_key_b64(key)
    keys.verify(keys.public_key_b64(key), MESSAGE, keys.sign(loaded, MESSAGE))


@pytest.mark.parametrize(
    "pem",
    [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_pem_garbage_is_a_signature_error(pem: bytes) -> None:
    with pytest.raises(SignatureError):
        keys.private_key_from_pem(pem)


def test_encrypted_pem_is_a_signature_error(key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
    with pytest.raises(SignatureError):
        keys.private_key_from_pem(pem)


def test_pem_of_another_algorithm_is_refused() -> None:
    pem = rsa_key(public_exponent=65537, key_size=1024).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        keys.private_key_from_pem(pem)


def test_fingerprint_format_and_stability(key: Ed25519PrivateKey) -> None:
    public = keys.public_key_b64(key)
    fp = keys.fingerprint(public)
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp)
    assert keys.fingerprint(public) == fp
    assert keys.fingerprint(keys.public_key_b64(keys.generate_private_key())) != fp


def test_fingerprint_known_value() -> None:
    # OpenSSH's form, but over the raw 32 key bytes (not the SSH wire blob), so it is
    # pinned here: stored fingerprints must never change meaning.
    raw = bytes(range(32))
    assert hashlib.sha256(raw).digest() == base64.b64decode(
        "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0="
    )
    assert keys.fingerprint(base64.b64encode(raw).decode()) == (
        "SHA256:Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0"
    )


def test_fingerprint_rejects_bad_key() -> None:
    with pytest.raises(SignatureError):
        keys.fingerprint("not a key")


def test_signature_error_is_a_coact_error() -> None:
    assert issubclass(SignatureError, CoactError)
