"""Access tokens against the JWT attacks of RFC 8725, plus refresh tokens and
enrollment codes. Real Ed25519 keys, real PyJWT; time comes from a fake clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeClock

from coact.relay.keyring import KeyRing
from coact.relay.tokens import (
    CLOCK_LEEWAY,
    DEVICE_ACCESS,
    USER_ACCESS,
    Claims,
    TokenError,
    TokenIssuer,
    hash_enrollment_code,
    hash_refresh_token,
    new_enrollment_code,
    new_refresh_token,
)
from coact.shared import keys

ISSUER = "https://relay.coact.test"



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring(tmp_path: Path, clock: FakeClock) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keys", clock)


@pytest.fixture
def issuer(ring: KeyRing, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(ring, ISSUER, clock)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(
    header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey | None = None
) -> str:
    """A token built by hand, as an attacker would: any header, any payload, signed
    with ``key`` (Ed25519) or left unsigned."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = key.sign(signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64url(signature)}"


def user_payload(clock: FakeClock, **changes: Any) -> dict[str, Any]:
    now = int(clock.now().timestamp())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "coact-api",
        "sub": "user-1",
        "org": "org-1",
        "role": "admin",
        "jti": "jti-1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def user_header(ring: KeyRing, **changes: Any) -> dict[str, Any]:
    header = {"alg": "EdDSA", "typ": USER_ACCESS, "kid": ring.active().kid}
    header.update(changes)
    return header


def refused(issuer: TokenIssuer, token: str, kind: str = "user") -> TokenError:
    with pytest.raises(TokenError) as info:
        issuer.verify(token, kind)  # type: ignore[arg-type]
    return info.value


# -- the happy path ---------------------------------------------------------------------


def test_user_token_round_trip(issuer: TokenIssuer, ring: KeyRing, clock: FakeClock) -> None:
    token, claims = issuer.issue_user_token("user-1", "org-1", "operator")
    assert claims == Claims(
        subject="user-1",
        org_id="org-1",
        kind="user",
        role="operator",
        jti=claims.jti,
        issued_at=clock.now(),
        expires_at=clock.now() + timedelta(minutes=5),
    )
    assert issuer.verify(token, "user") == claims
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "typ": USER_ACCESS,
        "kid": ring.active().kid,
    }


def test_device_token_round_trip(issuer: TokenIssuer, clock: FakeClock) -> None:
    token, claims = issuer.issue_device_token("device-1", "org-1")
    assert claims.kind == "device"
    assert claims.role is None
    assert claims.expires_at == clock.now() + timedelta(minutes=10)
    assert issuer.verify(token, "device") == claims
    assert jwt.get_unverified_header(token)["typ"] == DEVICE_ACCESS


def test_each_token_has_its_own_jti(issuer: TokenIssuer) -> None:
    jtis = {issuer.issue_user_token("u", "o", "viewer")[1].jti for _ in range(20)}
    assert len(jtis) == 20


def test_unknown_claims_are_kept_apart(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    token = forge(user_header(ring), user_payload(clock, scope="x"), ring.active().private_key)
    assert dict(issuer.verify(token, "user").extra) == {"scope": "x"}


# -- algorithm confusion ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_unsigned_alg_none_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, alg: str
) -> None:
    token = forge(user_header(ring, alg=alg), user_payload(clock))
    assert refused(issuer, token).reason == "bad_algorithm"


@pytest.mark.parametrize("secret_form", ["raw", "pem", "b64"])
def test_hs256_keyed_with_the_public_key_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, secret_form: str
) -> None:
    # The classic confusion attack: the public key is public, so an HMAC "signed"
    # with it verifies on a library that lets the token choose the algorithm.
    public = ring.active().public_key
    secret = {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "b64": keys.public_key_b64(public).encode(),
    }[secret_form]
    header = user_header(ring, alg="HS256")
    payload = user_payload(clock)
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(mac)}"
    assert refused(issuer, token).reason == "bad_algorithm"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "Ed25519", "eddsa", "EdDSA "])
def test_any_other_alg_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, alg: str
) -> None:
    token = forge(user_header(ring, alg=alg), user_payload(clock), ring.active().private_key)
    assert refused(issuer, token).reason == "bad_algorithm"


# -- key selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "https://evil.example/jwks.json",
        "file:///dev/zero",
        "kid' OR '1'='1",
        "",
        "k" * 65,
        None,
        42,
        ["a"],
    ],
)
def test_kid_that_is_not_a_plain_id_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, kid: object
) -> None:
    token = forge(user_header(ring, kid=kid), user_payload(clock), ring.active().private_key)
    error = refused(issuer, token)
    assert error.reason in {"bad_key_id", "malformed"}


def test_missing_kid_is_refused(issuer: TokenIssuer, ring: KeyRing, clock: FakeClock) -> None:
    header = user_header(ring)
    del header["kid"]
    token = forge(header, user_payload(clock), ring.active().private_key)
    assert refused(issuer, token).reason == "bad_key_id"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.example/jwks.json"),
        ("x5u", "https://evil.example/cert.pem"),
        ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("b64", False),
    ],
)
def test_key_carrying_and_critical_headers_are_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, name: str, value: object
) -> None:
    # Signed by the real key, so only the header itself can be the reason to refuse.
    token = forge(
        user_header(ring, **{name: value}), user_payload(clock), ring.active().private_key
    )
    error = refused(issuer, token)
    assert error.reason == "bad_header"
    assert name in str(error)


def test_embedded_jwk_of_the_attackers_key_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    attacker = keys.generate_private_key()
    raw = attacker.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    token = forge(user_header(ring, jwk=jwk), user_payload(clock), attacker)
    assert refused(issuer, token).reason == "bad_header"


def test_token_from_a_key_outside_the_ring_is_refused(
    tmp_path: Path, issuer: TokenIssuer, clock: FakeClock
) -> None:
    other_ring = KeyRing.load_or_create(tmp_path / "other", clock)
    token, _ = TokenIssuer(other_ring, ISSUER, clock).issue_user_token("u", "o", "admin")
    assert refused(issuer, token).reason == "unknown_key"


def test_ring_kid_with_a_foreign_signature_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    token = forge(user_header(ring), user_payload(clock), keys.generate_private_key())
    assert refused(issuer, token).reason == "bad_signature"


def test_tampered_payload_is_refused(issuer: TokenIssuer, clock: FakeClock) -> None:
    token, _ = issuer.issue_user_token("user-1", "org-1", "viewer")
    header, _, signature = token.split(".")
    payload = user_payload(clock, role="admin")
    tampered = f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"
    assert refused(issuer, tampered).reason == "bad_signature"


def test_tampered_signature_is_refused(issuer: TokenIssuer) -> None:
    token, _ = issuer.issue_user_token("user-1", "org-1", "viewer")
    head, payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    assert refused(issuer, f"{head}.{payload}.{flipped}{signature[1:]}").reason == "bad_signature"


# -- time -------------------------------------------------------------------------------


def test_expired_token_is_refused_after_the_leeway(issuer: TokenIssuer, clock: FakeClock) -> None:
    token, _ = issuer.issue_user_token("user-1", "org-1", "viewer")
    clock.advance(timedelta(minutes=5) + CLOCK_LEEWAY - timedelta(seconds=1))
    assert issuer.verify(token, "user").subject == "user-1"
    clock.advance(timedelta(seconds=1))
    error = refused(issuer, token)
    assert error.reason == "expired"
    assert str(error) == "token expired"


def test_token_from_the_future_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    now = int(clock.now().timestamp())
    token = forge(
        user_header(ring),
        user_payload(clock, nbf=now + 120, exp=now + 600),
        ring.active().private_key,
    )
    assert refused(issuer, token).reason == "not_yet_valid"
    clock.advance(timedelta(seconds=120) - CLOCK_LEEWAY)
    assert issuer.verify(token, "user").subject == "user-1"


def test_clock_moved_back_makes_a_fresh_token_not_yet_valid(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    token, _ = issuer.issue_user_token("user-1", "org-1", "viewer")
    clock.advance(-timedelta(minutes=2))
    assert refused(issuer, token).reason == "not_yet_valid"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"])
def test_missing_registered_claim_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, claim: str
) -> None:
    payload = user_payload(clock)
    del payload[claim]
    token = forge(user_header(ring), payload, ring.active().private_key)
    assert refused(issuer, token).reason == "missing_claim"


@pytest.mark.parametrize("exp", ["9999999999", 9999999999.5, True])
def test_non_integer_times_are_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, exp: object
) -> None:
    token = forge(user_header(ring), user_payload(clock, exp=exp), ring.active().private_key)
    assert refused(issuer, token).reason == "bad_claim"


# -- audience, issuer, type -------------------------------------------------------------


@pytest.mark.parametrize("aud", ["coact-agent", "someone-else", ["coact-api", "coact-agent"]])
def test_wrong_audience_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, aud: object
) -> None:
    token = forge(user_header(ring), user_payload(clock, aud=aud), ring.active().private_key)
    assert refused(issuer, token).reason == "wrong_audience"


def test_wrong_issuer_is_refused(ring: KeyRing, issuer: TokenIssuer, clock: FakeClock) -> None:
    token, _ = TokenIssuer(ring, "https://other.coact.test", clock).issue_user_token(
        "u", "o", "admin"
    )
    assert refused(issuer, token).reason == "wrong_issuer"


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "coact-user+JWT", None])
def test_wrong_typ_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock, typ: str | None
) -> None:
    header = user_header(ring, typ=typ)
    if typ is None:
        del header["typ"]
    token = forge(header, user_payload(clock), ring.active().private_key)
    error = refused(issuer, token)
    assert error.reason == "wrong_type"
    assert str(error) == "wrong token type: expected a user token"


def test_device_token_is_not_a_user_token(issuer: TokenIssuer) -> None:
    token, _ = issuer.issue_device_token("device-1", "org-1")
    assert refused(issuer, token, "user").reason == "wrong_type"


def test_user_token_is_not_a_device_token(issuer: TokenIssuer) -> None:
    token, _ = issuer.issue_user_token("user-1", "org-1", "admin")
    assert refused(issuer, token, "device").reason == "wrong_type"


def test_device_typed_token_with_user_audience_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    # typ and aud must agree: relabelling one without the other gets nowhere.
    token = forge(
        user_header(ring, typ=DEVICE_ACCESS),
        user_payload(clock, role=None),
        ring.active().private_key,
    )
    assert refused(issuer, token, "device").reason == "wrong_audience"


def test_user_token_without_role_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    token = forge(user_header(ring), user_payload(clock, role=None), ring.active().private_key)
    assert refused(issuer, token).reason == "bad_claim"


def test_user_token_without_org_is_refused(
    issuer: TokenIssuer, ring: KeyRing, clock: FakeClock
) -> None:
    token = forge(user_header(ring), user_payload(clock, org=None), ring.active().private_key)
    assert refused(issuer, token).reason == "bad_claim"


# -- malformed input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", "a.b", "....", "x" * 5000, "\u00e9.a.b", "e30.e30.e30.e30"]
)
def test_malformed_tokens_are_refused(issuer: TokenIssuer, token: str) -> None:
    assert refused(issuer, token).reason == "malformed"


def test_header_that_is_not_an_object_is_refused(issuer: TokenIssuer) -> None:
    token = f"{b64url(b'[1]')}.{b64url(b'{}')}.{b64url(b'x')}"
    assert refused(issuer, token).reason == "malformed"


# -- rotation ---------------------------------------------------------------------------


def test_rotation_overlap(ring: KeyRing, clock: FakeClock) -> None:
    # A long TTL so that only the key's overlap, not the token's expiry, decides.
    issuer = TokenIssuer(ring, ISSUER, clock, user_ttl=timedelta(hours=2))
    old_token, _ = issuer.issue_user_token("user-1", "org-1", "admin")
    old_kid = ring.active().kid

    ring.rotate(timedelta(minutes=15))
    new_token, _ = issuer.issue_user_token("user-1", "org-1", "admin")
    assert jwt.get_unverified_header(new_token)["kid"] == ring.active().kid != old_kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, ring.active().kid}
    assert issuer.verify(old_token, "user").subject == "user-1"

    clock.advance(timedelta(minutes=15))
    assert refused(issuer, old_token).reason == "unknown_key"
    assert issuer.verify(new_token, "user").subject == "user-1"
    assert [k["kid"] for k in ring.jwks()["keys"]] == [ring.active().kid]


def test_tokens_verify_with_the_published_jwks(issuer: TokenIssuer, ring: KeyRing) -> None:
    # What a third party holding only the JWKS would do.
    token, _ = issuer.issue_device_token("device-1", "org-1")
    jwk_set = jwt.PyJWKSet.from_dict(ring.jwks())
    key = jwk_set[jwt.get_unverified_header(token)["kid"]]
    payload = jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience="coact-agent",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert payload["sub"] == "device-1"


def test_issuer_settings_are_validated(ring: KeyRing, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="issuer"):
        TokenIssuer(ring, "", clock)
    with pytest.raises(ValueError, match="user_ttl"):
        TokenIssuer(ring, ISSUER, clock, user_ttl=timedelta(0))


# -- refresh tokens ---------------------------------------------------------------------


def test_refresh_tokens() -> None:
    token, digest = new_refresh_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 random bytes, URL-safe
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert digest == hash_refresh_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert len({new_refresh_token()[0] for _ in range(50)}) == 50


# -- enrollment codes -------------------------------------------------------------------


def test_enrollment_code_shape() -> None:
    code, digest = new_enrollment_code()
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{5}-){3}[0-9A-HJKMNP-TV-Z]{5}", code)
    assert digest == hash_enrollment_code(code)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert len({new_enrollment_code()[0] for _ in range(50)}) == 50


def test_enrollment_code_normalization() -> None:
    code = "7K3QD-M9X2P-01ABC-DEFGH"
    digest = hash_enrollment_code(code)
    for typed in [
        "7k3qd-m9x2p-01abc-defgh",
        "7K3QD M9X2P 01ABC DEFGH",
        "7K3QDM9X2P01ABCDEFGH",
        "  7k3qd - m9x2p\t01abc-DEFGH \n",
        "7K3QD-M9X2P-OIABC-DEFGH",  # O for 0 and I for 1
        "7K3QD-M9X2P-olABC-DEFGH",  # o for 0 and l for 1
    ]:
        assert hash_enrollment_code(typed) == digest, typed
    assert hash_enrollment_code("7K3QD-M9X2P-01ABC-DEFGJ") != digest


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("7K3QD-M9X2P-01ABC", "20 letters and digits, got 15"),
        ("7K3QD-M9X2P-01ABC-DEFGH-1", "got 21"),
        ("7K3QD-M9X2P-01ABC-DEFGU", "cannot contain 'U'"),
        ("7K3QD_M9X2P_01ABC_DEFGH", "got 23"),
    ],
)
def test_malformed_enrollment_code_gets_a_clear_message(typed: str, message: str) -> None:
    with pytest.raises(TokenError, match=message) as info:
        hash_enrollment_code(typed)
    assert info.value.reason == "malformed"


def test_a_token_verified_before_still_expires_and_keeps_its_kind(issuer: TokenIssuer, clock: FakeClock) -> None:
    token, _ = issuer.issue_user_token("usr_1", "org_1", "admin")
    assert issuer.verify(token, "user").subject == "usr_1"
    assert issuer.verify(token, "user").subject == "usr_1"  # served from the verified cache
    with pytest.raises(TokenError) as wrong_kind:
        issuer.verify(token, "device")
    assert wrong_kind.value.reason == "wrong_type"
    clock.advance(timedelta(minutes=6))
    with pytest.raises(TokenError) as expired:
        issuer.verify(token, "user")
    assert expired.value.reason == "expired"
