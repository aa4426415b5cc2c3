"""JWT attacks (RFC 8725) against a real relay over HTTP: each forged or misused token
is answered 401 ``application/problem+json`` and changes nothing.

The probe is ``POST /api/v1/devices/enrollment-codes`` (admin only; it would create a
code) and ``GET /api/v1/me``; "nothing changed" is checked on the org's code list.
Tokens that must get past the signature check to exercise the claim checks are signed
with the relay's real key, read from its data directory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from harness import Api, Relay
from principals import add_user, b64url, disable_user, sign, unsigned, user_claims

from coact.shared import keys
from coact.shared.clock import to_rfc3339, utc_now
from coact.shared.protocol import token_request_message


def _ts(delta: timedelta) -> int:
    return int((datetime.now(UTC) + delta).timestamp())


def _hs256(relay: Relay, claims: dict[str, Any], secret: bytes, kid: str) -> str:
    header = {"alg": "HS256", "typ": "coact-user+jwt", "kid": kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


Forge = Callable[[Relay, dict[str, Any], dict[str, Any]], str]

ATTACKS: dict[str, Forge] = {
    "alg_none": lambda r, u, j: unsigned({"alg": "none", "typ": "coact-user+jwt", "kid": j["keys"][0]["kid"]},
                                         user_claims(r, u)),
    "alg_none_no_signature_part": lambda r, u, j: unsigned({"alg": "none"}, user_claims(r, u))[:-1].rstrip("."),
    "hs256_with_public_key_b64": lambda r, u, j: _hs256(r, user_claims(r, u), j["keys"][0]["x"].encode(),
                                                        j["keys"][0]["kid"]),
    "hs256_with_public_key_raw": lambda r, u, j: _hs256(
        r, user_claims(r, u), base64.urlsafe_b64decode(j["keys"][0]["x"] + "=="), j["keys"][0]["kid"]),
    "hs256_with_public_key_json": lambda r, u, j: _hs256(r, user_claims(r, u), json.dumps(j["keys"][0]).encode(),
                                                         j["keys"][0]["kid"]),
    "kid_path_traversal": lambda r, u, j: sign(r, user_claims(r, u), kid="../../keys/tokens/x"),
    "kid_absolute_path": lambda r, u, j: sign(r, user_claims(r, u), kid="/dev/null"),
    "kid_url": lambda r, u, j: sign(r, user_claims(r, u), kid="https://evil.example/key.pem"),
    "kid_unknown": lambda r, u, j: sign(r, user_claims(r, u), kid="AAAAAAAAAAAAAAAA"),
    "jku_header": lambda r, u, j: sign(r, user_claims(r, u), jku="https://evil.example/jwks.json"),
    "x5u_header": lambda r, u, j: sign(r, user_claims(r, u), x5u="https://evil.example/cert.pem"),
    "jwk_header": lambda r, u, j: sign(r, user_claims(r, u), jwk=j["keys"][0]),
    "crit_header": lambda r, u, j: sign(r, user_claims(r, u), crit=["exp"]),
    "attacker_key_with_jwk": lambda r, u, j: _attacker_signed(r, u),
    "expired": lambda r, u, j: sign(r, user_claims(r, u, iat=_ts(timedelta(hours=-2)), nbf=_ts(timedelta(hours=-2)),
                                                   exp=_ts(timedelta(hours=-1)))),
    "not_yet_valid": lambda r, u, j: sign(r, user_claims(r, u, nbf=_ts(timedelta(hours=1)),
                                                         exp=_ts(timedelta(hours=2)))),
    "issued_in_the_future": lambda r, u, j: sign(r, user_claims(r, u, iat=_ts(timedelta(hours=1)))),
    "no_exp": lambda r, u, j: sign(r, user_claims(r, u, exp=None)),
    "wrong_audience": lambda r, u, j: sign(r, user_claims(r, u, aud="coact-agent")),
    "audience_list": lambda r, u, j: sign(r, user_claims(r, u, aud=["coact-api", "other"])),
    "wrong_issuer": lambda r, u, j: sign(r, user_claims(r, u, iss="https://evil.example")),
    "wrong_typ": lambda r, u, j: sign(r, user_claims(r, u), typ="JWT"),
    "device_typ_on_user_route": lambda r, u, j: sign(r, user_claims(r, u, aud="coact-agent", role=None),
                                                     typ="coact-device+jwt"),
    "float_exp": lambda r, u, j: sign(r, user_claims(r, u, exp=float(_ts(timedelta(minutes=5))))),
    "tampered_payload": lambda r, u, j: _tampered(r, u),
    "garbage": lambda r, u, j: "not-a-jwt",
}


def _attacker_signed(relay: Relay, user: dict[str, Any]) -> str:
    attacker = keys.generate_private_key()
    return jwt.encode(user_claims(relay, user), attacker, algorithm="EdDSA",
                      headers={"typ": "coact-user+jwt", "kid": "AAAAAAAAAAAAAAAA"})


def _tampered(relay: Relay, user: dict[str, Any]) -> str:
    header, _payload, signature = sign(relay, user_claims(relay, user, role="viewer")).split(".")
    return ".".join([header, b64url(json.dumps(user_claims(relay, user)).encode()), signature])


@pytest.fixture(scope="module")
def org(relay: Relay) -> tuple[Api, dict[str, Any], dict[str, Any]]:
    admin, user = relay.new_admin()
    return admin, user, relay.api().ok("GET", "/.well-known/jwks.json")


def _refused(relay: Relay, token: str) -> None:
    for method, path, body in (("GET", "/api/v1/me", None), ("POST", "/api/v1/devices/enrollment-codes", {})):
        answer = relay.api().request(method, path, body, token=token)
        assert answer.status == 401, f"{method} {path}: {answer.status} {answer.body}"
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["status"] == 401


def test_a_correctly_forged_token_is_accepted(relay: Relay, org: tuple[Api, dict[str, Any], dict[str, Any]]) -> None:
    """The control: the forging helpers make tokens the relay accepts, so each refusal
    below is caused by the one thing that attack changes."""
    admin, user, _jwks = org
    token = sign(relay, user_claims(relay, user))
    assert relay.api(token).ok("GET", "/api/v1/me")["user"]["id"] == user["id"]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_forged_token_is_refused_without_side_effect(
    relay: Relay, org: tuple[Api, dict[str, Any], dict[str, Any]], attack: str
) -> None:
    admin, user, jwks = org
    before = admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"]
    _refused(relay, ATTACKS[attack](relay, user, jwks))
    assert admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"] == before


def test_refresh_token_is_not_an_access_token(relay: Relay, org: tuple[Api, dict[str, Any], dict[str, Any]]) -> None:
    admin, user, _ = org
    _refused(relay, user["refresh_token"])


def test_device_token_is_refused_on_user_routes_and_user_token_on_device_routes(
    relay: Relay, org: tuple[Api, dict[str, Any], dict[str, Any]]
) -> None:
    admin, _user, _ = org
    key = keys.generate_private_key()
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    device_id = admin.ok("POST", "/api/v1/devices/enroll", {
        "code": code, "public_key": keys.public_key_b64(key), "name": "jwt-dev", "platform": "linux"})["device_id"]
    ts, nonce = to_rfc3339(utc_now()), "n" * 24
    device_token = admin.ok("POST", "/api/v1/devices/token", {
        "device_id": device_id, "ts": ts, "nonce": nonce,
        "signature": keys.sign(key, token_request_message(device_id, ts, nonce))})["access_token"]
    _refused(relay, device_token)
    answer = relay.api().get("/api/v1/agent/ws", token=admin.token)
    assert answer.status == 401
    assert answer.headers["Content-Type"].startswith("application/problem+json")


def test_disabled_users_unexpired_token_is_refused(relay: Relay, org: tuple[Api, dict[str, Any], dict[str, Any]]) -> None:
    admin, admin_user, _ = org
    operator, operator_user = add_user(relay, admin, admin_user, "operator")
    assert operator.ok("GET", "/api/v1/me")["user"]["id"] == operator_user["id"]
    disable_user(relay, admin, operator_user["id"])
    answer = operator.get("/api/v1/me")  # the access token itself is still within its TTL
    assert answer.status == 401
    assert "disabled" in answer.body["detail"]
    assert operator.post("/api/v1/devices/enrollment-codes", {}).status == 401
