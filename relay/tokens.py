"""Access tokens (JWT, RFC 8725 best practice), refresh tokens and enrollment codes.

Access tokens are short-lived JWTs signed by the relay's :class:`KeyRing` with
EdDSA (Ed25519). Verification trusts nothing in a token before its signature is
checked, and even the header is held to a fixed shape:

* ``alg`` must be exactly ``EdDSA`` (no ``none``, no HMAC keyed with a public key);
* ``typ`` says which kind of token it is (explicit typing, RFC 8725 §3.11), so a
  device token can never pass as a user token or the reverse; ``aud`` differs too;
* ``kid`` is looked up in the ring as an opaque string, never used as a path or URL;
* no other header is allowed, in particular ``jku``/``jwk``/``x5u``/``x5c`` (keys
  supplied by the attacker) and ``crit`` (extensions we do not implement).

Times are checked against the injected :class:`Clock`, not ``time.time()``, so that
tests and every other part of Coact agree on what "now" is.

Refresh tokens and enrollment codes are opaque random secrets; only their SHA-256
is stored. A slow hash is not needed: they carry >= 100 bits of entropy, so the
hash only stops a database reader from using them directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coact.relay.keyring import KeyRing
from coact.shared.clock import Clock
from coact.shared.errors import CoactError

USER_ACCESS = "coact-user+jwt"
DEVICE_ACCESS = "coact-device+jwt"
USER_AUDIENCE = "coact-api"
DEVICE_AUDIENCE = "coact-agent"
ALGORITHM = "EdDSA"

TokenKind = Literal["user", "device"]

# Clocks of relays behind one load balancer drift a little; more than this would
# let an expired token live noticeably longer.
CLOCK_LEEWAY = timedelta(seconds=30)
# Our tokens are a few hundred bytes; refusing big input early bounds parsing work.
VERIFIED_CACHE_SIZE = 4096
MAX_TOKEN_CHARS = 4096

_TYP = {"user": USER_ACCESS, "device": DEVICE_ACCESS}
_AUDIENCE = {"user": USER_AUDIENCE, "device": DEVICE_AUDIENCE}
_ALLOWED_HEADERS = frozenset({"alg", "typ", "kid"})
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REQUIRED_CLAIMS = ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]
_REGISTERED_CLAIMS = frozenset({*_REQUIRED_CLAIMS, "org", "role"})


class TokenError(CoactError):
    """A token, refresh token or enrollment code is not acceptable.

    ``reason`` is a short stable code for logs and metrics (``expired``,
    ``wrong_type``, ``unknown_key``, ...); the message is for people. The HTTP layer
    answers 401 for all of them and should not echo the detail to the caller.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    """What a verified access token says. Times are aware UTC, whole seconds."""

    subject: str
    org_id: str
    kind: TokenKind
    role: str | None
    jti: str
    issued_at: datetime
    expires_at: datetime
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


class TokenIssuer:
    """Issues and verifies the relay's access tokens."""

    def __init__(
        self,
        keyring: KeyRing,
        issuer: str,
        clock: Clock,
        user_ttl: timedelta = timedelta(minutes=5),
        device_ttl: timedelta = timedelta(minutes=10),
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        for name, ttl in (("user_ttl", user_ttl), ("device_ttl", device_ttl)):
            if ttl <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock
        self._ttl: dict[TokenKind, timedelta] = {"user": user_ttl, "device": device_ttl}
        # Payloads whose header and signature already verified, so a client polling
        # with one token pays for Ed25519 once, not per request. The claims (expiry,
        # not-before, kind) are still checked against the clock on every call.
        self._verified: dict[tuple[str, TokenKind], tuple[str, dict[str, Any]]] = {}

    # -- issuing --------------------------------------------------------------------

    def issue_user_token(self, user_id: str, org_id: str, role: str) -> tuple[str, Claims]:
        if not role:
            raise ValueError("a user token needs a role")
        return self._issue("user", user_id, org_id, role)

    def issue_device_token(self, device_id: str, org_id: str) -> tuple[str, Claims]:
        return self._issue("device", device_id, org_id, None)

    def _issue(
        self, kind: TokenKind, subject: str, org_id: str, role: str | None
    ) -> tuple[str, Claims]:
        if not subject or not org_id:
            raise ValueError("subject and org_id must not be empty")
        # JWT times are whole seconds; truncating here makes the returned Claims
        # equal to what verify() later reads back.
        now = self._clock.now().astimezone(UTC).replace(microsecond=0)
        claims = Claims(
            subject=subject,
            org_id=org_id,
            kind=kind,
            role=role,
            jti=secrets.token_urlsafe(16),
            issued_at=now,
            expires_at=now + self._ttl[kind],
        )
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": _AUDIENCE[kind],
            "sub": subject,
            "org": org_id,
            "jti": claims.jti,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
        if role is not None:
            payload["role"] = role
        key = self._keyring.active()
        token = jwt.encode(
            payload,
            key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": key.kid, "typ": _TYP[kind]},
        )
        return token, claims

    # -- verifying ------------------------------------------------------------------

    def verify(self, token: str, kind: TokenKind) -> Claims:
        """The claims of ``token`` if it is a valid, current ``kind`` token, else
        :class:`TokenError`."""
        if kind not in _TYP:
            raise ValueError(f"unknown token kind {kind!r}")
        if not isinstance(token, str) or not token:
            raise TokenError("malformed", "token is missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("malformed", "token is too long")
        cached = self._verified.get((token, kind))
        if cached is not None and self._keyring.verification_key(cached[0]) is not None:
            return self._check_claims(cached[1], kind)

        public_key = self._check_header(token, kind)
        try:
            payload = jwt.decode(
                token,
                key=public_key,
                algorithms=[ALGORITHM],
                audience=_AUDIENCE[kind],
                issuer=self._issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "strict_aud": True,
                    # PyJWT would compare these with time.time(); we use our clock below.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad_signature", "token signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("missing_claim", f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("wrong_audience", "token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong_issuer", "token is from another issuer") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenError("bad_algorithm", "token algorithm is not allowed") from exc
        except jwt.DecodeError as exc:
            raise TokenError("malformed", "token is malformed") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("invalid", f"token is invalid: {exc}") from exc
        claims = self._check_claims(payload, kind)
        # User tokens come back with every API call; a device token opens one session
        # and is rarely seen again, so remembering it would only cost memory per device.
        if kind == "user":
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[(token, kind)] = (str(_unverified_header(token)["kid"]), payload)
        return claims

    def _check_header(self, token: str, kind: TokenKind) -> Ed25519PublicKey:
        header = _unverified_header(token)
        extra = sorted(set(header) - _ALLOWED_HEADERS)
        if extra:
            # Covers jku/jwk/x5u/x5c (attacker-chosen keys) and crit (unknown
            # extensions a verifier must reject) along with anything unexpected.
            raise TokenError("bad_header", f"token header {extra[0]!r} is not allowed")
        if header.get("alg") != ALGORITHM:
            raise TokenError("bad_algorithm", "token algorithm is not allowed")
        if header.get("typ") != _TYP[kind]:
            raise TokenError("wrong_type", f"wrong token type: expected a {kind} token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise TokenError("bad_key_id", "token key id is missing or malformed")
        public_key = self._keyring.verification_key(kid)
        if public_key is None:
            raise TokenError("unknown_key", "token is signed by an unknown or retired key")
        return public_key

    def _check_claims(self, payload: dict[str, Any], kind: TokenKind) -> Claims:
        times: dict[str, int] = {}
        for name in ("iat", "nbf", "exp"):
            value = payload[name]
            # bool is an int subclass; floats are legal NumericDates but we never
            # issue them, so anything else is not one of our tokens.
            if type(value) is not int:
                raise TokenError("bad_claim", f"token claim {name!r} must be an integer")
            times[name] = value
        now = self._clock.now().timestamp()
        leeway = CLOCK_LEEWAY.total_seconds()
        if times["exp"] <= now - leeway:
            raise TokenError("expired", "token expired")
        if times["nbf"] > now + leeway or times["iat"] > now + leeway:
            raise TokenError("not_yet_valid", "token is not valid yet")

        subject = _non_empty_string(payload, "sub")
        org_id = _non_empty_string(payload, "org")
        jti = _non_empty_string(payload, "jti")
        role = payload.get("role")
        if kind == "user":
            if not isinstance(role, str) or not role:
                raise TokenError("bad_claim", "user token has no role")
        elif role is not None:
            raise TokenError("bad_claim", "device token must not carry a role")
        return Claims(
            subject=subject,
            org_id=org_id,
            kind=kind,
            role=role,
            jti=jti,
            issued_at=datetime.fromtimestamp(times["iat"], UTC),
            expires_at=datetime.fromtimestamp(times["exp"], UTC),
            extra=MappingProxyType(
                {k: v for k, v in payload.items() if k not in _REGISTERED_CLAIMS}
            ),
        )


def _non_empty_string(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise TokenError("bad_claim", f"token claim {name!r} must be a non-empty string")
    return value


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, decoded here rather than by PyJWT so that every header is
    judged by our allowlist first (PyJWT rejects some, e.g. ``crit``, on its own
    terms and with its own errors)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", "token is malformed")
    encoded = parts[0]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        header = json.loads(raw)
    except (ValueError, binascii.Error) as exc:  # UnicodeDecodeError is a ValueError
        raise TokenError("malformed", "token header is malformed") from exc
    if not isinstance(header, dict):
        raise TokenError("malformed", "token header is not a JSON object")
    return header


# -- refresh tokens ---------------------------------------------------------------------

REFRESH_TOKEN_BYTES = 32


def new_refresh_token() -> tuple[str, str]:
    """A fresh refresh token (256 random bits, URL-safe) and the hash to store."""
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- enrollment codes -------------------------------------------------------------------

# Crockford's base32: no I, L, O or U, so nothing reads as another character.
ENROLLMENT_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ENROLLMENT_GROUPS = 4
ENROLLMENT_GROUP_CHARS = 5  # 20 chars x 5 bits = 100 bits
# What people type for the characters the alphabet leaves out (Crockford's rule).
_ENROLLMENT_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_ENROLLMENT_SEPARATORS = re.compile(r"[\s-]+")


def new_enrollment_code() -> tuple[str, str]:
    """A one-time enrollment code like ``7K3QD-M9X2P-...`` and the hash to store."""
    chars = "".join(
        secrets.choice(ENROLLMENT_ALPHABET)
        for _ in range(ENROLLMENT_GROUPS * ENROLLMENT_GROUP_CHARS)
    )
    code = "-".join(
        chars[i : i + ENROLLMENT_GROUP_CHARS] for i in range(0, len(chars), ENROLLMENT_GROUP_CHARS)
    )
    return code, hash_enrollment_code(code)


def normalize_enrollment_code(code: str) -> str:
    """Upper-case ``code``, drop dashes and spaces, read O as 0 and I/L as 1.

    Raises :class:`TokenError` (reason ``malformed``) with a message for the person
    typing it if what is left cannot be a code.
    """
    text = _ENROLLMENT_SEPARATORS.sub("", code).upper().translate(_ENROLLMENT_ALIASES)
    expected = ENROLLMENT_GROUPS * ENROLLMENT_GROUP_CHARS
    if len(text) != expected:
        raise TokenError(
            "malformed", f"an enrollment code has {expected} letters and digits, got {len(text)}"
        )
    bad = sorted(set(text) - set(ENROLLMENT_ALPHABET))
    if bad:
        raise TokenError("malformed", f"an enrollment code cannot contain {bad[0]!r}")
    return text


def hash_enrollment_code(code: str) -> str:
    """SHA-256 (hex) of the normalised code, so any way of typing it matches."""
    return hashlib.sha256(normalize_enrollment_code(code).encode("ascii")).hexdigest()
