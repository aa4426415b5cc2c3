"""Callers of every kind for security tests against a real relay: users of each role,
disabled users, device tokens, and tokens forged with (or without) the relay's key.

Users of a given role are made through ``POST /api/v1/admin/users`` when the relay
serves it; otherwise they are written into the relay's SQLite state database the way
the relay itself would (same id format, argon2id hash). Forged tokens that must pass
the signature check are signed with the relay's active key, read from its data
directory, as an attacker who stole it, or a test checking the *claims* logic, would.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import PASSWORD, TEST_ENV, Api, Relay

from coact.relay.ids import new_id
from coact.relay.passwords import PasswordHasher, PasswordParams
from coact.shared import keys
from coact.shared.clock import to_rfc3339


def _serves(relay: Relay, method: str, path: str) -> bool:
    spec = relay.api().get("/openapi.json").body
    return method.lower() in spec.get("paths", {}).get(path, {})


def add_user(relay: Relay, admin: Api, admin_user: dict[str, Any], role: str) -> tuple[Api, dict[str, Any]]:
    """A logged-in user of ``role`` in the admin's org."""
    email = f"{role}-{uuid.uuid4().hex[:12]}@example.com"
    user: dict[str, Any] | None = None
    if _serves(relay, "POST", "/api/v1/admin/users"):
        answer = admin.post("/api/v1/admin/users", {"email": email, "password": PASSWORD, "role": role})
        if answer.status == 201:
            user = answer.body.get("user", answer.body)
    if user is None:
        user = _insert_user(relay, admin_user["org_id"], email, role)
    api = relay.api()
    api.token = api.ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})["access_token"]
    return api, {**user, "email": email}


def _insert_user(relay: Relay, org_id: str, email: str, role: str) -> dict[str, Any]:
    params = PasswordParams(
        int(TEST_ENV["COACT_PASSWORD_TIME_COST"]), int(TEST_ENV["COACT_PASSWORD_MEMORY_KIB"]),
        int(TEST_ENV["COACT_PASSWORD_PARALLELISM"]),
    )
    now = to_rfc3339(datetime.now(UTC))
    user = {"id": new_id("usr"), "org_id": org_id, "email": email, "role": role}
    with _db(relay) as db:
        db.execute(
            "INSERT INTO users (id, org_id, email, password_hash, role, disabled, created_at, password_changed_at)"
            " VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
            (user["id"], org_id, email, PasswordHasher(params).hash(PASSWORD), role, now, now),
        )
    return user


def disable_user(relay: Relay, admin: Api, user_id: str) -> None:
    """Disable through ``PATCH /api/v1/admin/users/{id}`` if served, else in the database."""
    if _serves(relay, "PATCH", "/api/v1/admin/users/{id}"):
        answer = admin.request("PATCH", f"/api/v1/admin/users/{user_id}", {"disabled": True})
        if answer.status == 200:
            return
    with _db(relay) as db:
        db.execute("UPDATE users SET disabled = 1 WHERE id = ?", (user_id,))


class _db:
    def __init__(self, relay: Relay) -> None:
        self.path = relay.data_dir / "relay.db"

    def __enter__(self) -> sqlite3.Connection:
        self.conn = sqlite3.connect(self.path, timeout=10)
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.conn.commit()
        self.conn.close()


# -- tokens ------------------------------------------------------------------------------


def relay_signing_key(relay: Relay) -> tuple[str, Ed25519PrivateKey]:
    """The relay's active token-signing key (kid, private key), from its data directory."""
    directory = Path(relay.data_dir) / "keys" / "tokens"
    kid = json.loads((directory / "index.json").read_text())["active"]
    return kid, keys.private_key_from_pem((directory / f"{kid}.pem").read_bytes())


def user_claims(relay: Relay, user: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The claims the relay itself would put in ``user``'s access token, then ``changes``."""
    now = datetime.now(UTC)
    claims = {
        "iss": relay.url, "aud": "coact-api", "sub": user["id"], "org": user["org_id"], "role": user["role"],
        "jti": uuid.uuid4().hex, "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(relay: Relay, claims: dict[str, Any], **header: Any) -> str:
    """An EdDSA token signed with the relay's real key; ``header`` adds or overrides fields."""
    kid, key = relay_signing_key(relay)
    fields = {"kid": kid, "typ": "coact-user+jwt", **header}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={k: v for k, v in fields.items() if v is not None})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header at all, e.g. ``alg: none``."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)])


# -- devices speaking the wire protocol directly ---------------------------------------


class RawDevice:
    """An enrolled device identity driven by the test itself (no agent process)."""

    def __init__(self, relay_url: str, admin: Api, name: str = "raw-device", platform: str = "linux",
                 code: str | None = None) -> None:
        self.relay_url = relay_url
        self.key = keys.generate_private_key()
        code = code or admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
        self.enrolled = Api(relay_url).ok("POST", "/api/v1/devices/enroll", {
            "code": code, "public_key": keys.public_key_b64(self.key), "name": name, "platform": platform,
        })
        self.device_id: str = self.enrolled["device_id"]

    def token_request(self, nonce: str | None = None) -> dict[str, Any]:
        from coact.shared.protocol import token_request_message

        ts, nonce = to_rfc3339(datetime.now(UTC)), nonce or uuid.uuid4().hex
        signature = keys.sign(self.key, token_request_message(self.device_id, ts, nonce))
        return {"device_id": self.device_id, "ts": ts, "nonce": nonce, "signature": signature}

    def token(self) -> str:
        return str(Api(self.relay_url).ok("POST", "/api/v1/devices/token", self.token_request())["access_token"])

    async def session(self) -> tuple[Any, dict[str, Any]]:
        """An authenticated agent WebSocket and its welcome frame."""
        from websockets.asyncio.client import connect

        from coact.shared.protocol import auth_message

        ws = await connect(
            self.relay_url.replace("http://", "ws://") + "/api/v1/agent/ws",
            additional_headers={"Authorization": f"Bearer {self.token()}"},
            compression=None, ping_interval=None,
        )
        challenge = json.loads(await ws.recv())
        signature = keys.sign(self.key, auth_message(self.device_id, challenge["nonce"]))
        await ws.send(json.dumps({"v": 1, "type": "auth", "signature": signature}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        return ws, welcome
