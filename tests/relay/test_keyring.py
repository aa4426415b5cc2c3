"""The relay's JWT signing key ring: files, kids, rotation, JWKS (real keys and files)."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fakes import FakeClock

from coact.relay.keyring import INDEX_NAME, KeyRing, KeyRingError, kid_for
from coact.shared import keys

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "relay" / "jwt-keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_public(ring: KeyRing) -> bytes:
    return ring.active().public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_creates_one_key_with_derived_kid(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    active = ring.active()
    assert active.kid == kid_for(active.public_key)
    assert len(active.kid) == 16
    assert active.created_at == clock.now()
    assert active.retired_at is None
    assert [key.kid for key in ring.signing_keys()] == [active.kid]
    assert ring.verification_key(active.kid) is not None


@posix_only
def test_files_are_private(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    assert mode(directory) == 0o700
    assert mode(directory / f"{ring.active().kid}.pem") == 0o600
    assert mode(directory / INDEX_NAME) == 0o600
    ring.rotate(timedelta(minutes=15))
    assert mode(directory / f"{ring.active().kid}.pem") == 0o600
    # No temp files left behind by the atomic writes.
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []


def test_persists_across_load(directory: Path, clock: FakeClock) -> None:
    first = KeyRing.load_or_create(directory, clock)
    again = KeyRing.load_or_create(directory, clock)
    assert again.active().kid == first.active().kid
    assert again.fingerprint == first.fingerprint
    assert again.active().created_at == first.active().created_at
    assert raw_public(again) == raw_public(first)


def test_fingerprint_is_the_shared_fingerprint_of_the_active_key(
    directory: Path, clock: FakeClock
) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    expected = keys.fingerprint(keys.public_key_b64(ring.active().private_key))
    assert ring.fingerprint == expected
    assert ring.fingerprint.startswith("SHA256:")


@pytest.mark.parametrize(
    "kid",
    [
        "",
        "../../etc/passwd",
        "index",
        "index.json",
        "https://evil.example/keys.json",
        "/dev/zero",
        "x" * 10_000,
    ],
)
def test_verification_key_only_knows_ring_kids(directory: Path, clock: FakeClock, kid: str) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    assert ring.verification_key(kid) is None


def test_verification_key_never_reads_the_directory(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    # A valid key file dropped next to the ring is not part of it.
    planted = keys.generate_private_key()
    planted_kid = kid_for(planted.public_key())
    path = directory / f"{planted_kid}.pem"
    path.write_bytes(keys.private_key_to_pem(planted))
    path.chmod(0o600)
    assert ring.verification_key(planted_kid) is None
    assert KeyRing.load_or_create(directory, clock).verification_key(planted_kid) is None


def test_rotation_keeps_old_key_verifying_for_the_overlap(
    directory: Path, clock: FakeClock
) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    old = ring.active()
    clock.advance(timedelta(days=30))
    new = ring.rotate(timedelta(minutes=15))

    assert new.kid != old.kid
    assert ring.active() == new
    retired = next(key for key in ring.signing_keys() if key.kid == old.kid)
    assert retired.retired_at == clock.now()
    assert retired.verifies_until == clock.now() + timedelta(minutes=15)
    assert ring.verification_key(old.kid) is not None
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}

    clock.advance(timedelta(minutes=15))
    assert ring.verification_key(old.kid) is None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]
    assert ring.verification_key(new.kid) is not None


def test_rotation_survives_reload(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    old = ring.active()
    new = ring.rotate(timedelta(minutes=15))

    reloaded = KeyRing.load_or_create(directory, clock)
    assert reloaded.active().kid == new.kid
    assert reloaded.verification_key(old.kid) is not None
    assert [k.kid for k in reloaded.signing_keys()] == [new.kid, old.kid]


def test_expired_keys_are_pruned_from_disk(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    old = ring.active()
    ring.rotate(timedelta(minutes=15))
    assert (directory / f"{old.kid}.pem").exists()

    clock.advance(timedelta(minutes=16))
    reloaded = KeyRing.load_or_create(directory, clock)
    assert [k.kid for k in reloaded.signing_keys()] == [reloaded.active().kid]
    assert not (directory / f"{old.kid}.pem").exists()
    index = json.loads((directory / INDEX_NAME).read_text())
    assert [entry["kid"] for entry in index["keys"]] == [reloaded.active().kid]


def test_rotate_prunes_too(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    first = ring.active()
    ring.rotate(timedelta(minutes=1))
    clock.advance(timedelta(minutes=2))
    ring.rotate(timedelta(minutes=1))
    assert first.kid not in {k.kid for k in ring.signing_keys()}
    assert len(ring.signing_keys()) == 2


def test_negative_overlap_is_refused(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    with pytest.raises(ValueError, match="overlap"):
        ring.rotate(timedelta(seconds=-1))


def test_jwks_is_an_rfc8037_okp_key_set(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    (jwk,) = ring.jwks()["keys"]
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwk["x"],
        "kid": ring.active().kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "=" not in jwk["x"]  # base64url without padding
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == raw_public(ring)
    assert "d" not in jwk  # never the private part


# -- refusing unsafe or broken directories ------------------------------------------------


@posix_only
def test_refuses_key_file_readable_by_others(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    (directory / f"{ring.active().kid}.pem").chmod(0o644)
    with pytest.raises(KeyRingError, match="0600"):
        KeyRing.load_or_create(directory, clock)


@posix_only
def test_refuses_directory_writable_by_others(directory: Path, clock: FakeClock) -> None:
    KeyRing.load_or_create(directory, clock)
    directory.chmod(0o777)
    with pytest.raises(KeyRingError, match="writable"):
        KeyRing.load_or_create(directory, clock)


@posix_only
def test_tightens_a_readable_directory(directory: Path, clock: FakeClock) -> None:
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    KeyRing.load_or_create(directory, clock)
    assert mode(directory) == 0o700


def test_refuses_key_files_without_index(directory: Path, clock: FakeClock) -> None:
    KeyRing.load_or_create(directory, clock)
    (directory / INDEX_NAME).unlink()
    with pytest.raises(KeyRingError, match="no index.json"):
        KeyRing.load_or_create(directory, clock)


def test_refuses_corrupt_index(directory: Path, clock: FakeClock) -> None:
    KeyRing.load_or_create(directory, clock)
    (directory / INDEX_NAME).write_text("{not json")
    with pytest.raises(KeyRingError, match="malformed"):
        KeyRing.load_or_create(directory, clock)


def test_refuses_index_with_path_as_kid(directory: Path, clock: FakeClock) -> None:
    KeyRing.load_or_create(directory, clock)
    index_path = directory / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["keys"][0]["kid"] = "../../../etc/ssl/private/key"
    index_path.write_text(json.dumps(index))
    with pytest.raises(KeyRingError, match="malformed kid"):
        KeyRing.load_or_create(directory, clock)


def test_refuses_swapped_key_file(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    path = directory / f"{ring.active().kid}.pem"
    path.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))
    with pytest.raises(KeyRingError, match="does not hold the key"):
        KeyRing.load_or_create(directory, clock)


def test_refuses_missing_key_file(directory: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(directory, clock)
    (directory / f"{ring.active().kid}.pem").unlink()
    with pytest.raises(KeyRingError, match="missing"):
        KeyRing.load_or_create(directory, clock)
