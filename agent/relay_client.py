"""The agent's two plain HTTP calls to the relay: enroll, and get a device token.

The standard library's client is enough for two JSON POSTs and keeps the resident
agent small; they run in a worker thread.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coact.agent.errors import AgentError, EnrollmentError, RevokedError
from coact.shared import keys
from coact.shared.clock import to_rfc3339, utc_now
from coact.shared.wire import token_request_message

TIMEOUT_S = 15


class RelayHTTPError(AgentError):
    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None) -> None:
        super().__init__(f"relay answered {status}: {problem.get('detail') or problem.get('title') or 'error'}")
        self.status = status
        self.problem = problem
        self.retry_after = retry_after  # seconds, when a busy relay said when to come back


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the relay sends whole seconds; an HTTP date
    or a value that does not parse is ignored), at most an hour."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(seconds, 3600.0) if seconds >= 0 else None


def post_json(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base_url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - URL is the configured relay
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read() or b"{}")
        except ValueError:
            problem = {}
        raise RelayHTTPError(exc.code, problem if isinstance(problem, dict) else {},
                             parse_retry_after(exc.headers.get("Retry-After"))) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AgentError(f"cannot reach the relay at {base_url}: {exc}") from exc


def enroll(base_url: str, code: str, public_key: str, name: str, platform: str) -> dict[str, Any]:
    try:
        return post_json(
            base_url, "/api/v1/devices/enroll",
            {"code": code, "public_key": public_key, "name": name, "platform": platform},
        )
    except RelayHTTPError as exc:
        raise EnrollmentError(f"enrollment refused: {exc.problem.get('detail', exc)}") from exc


def device_token(base_url: str, device_id: str, key: Ed25519PrivateKey) -> str:
    ts = to_rfc3339(utc_now())
    nonce = secrets.token_urlsafe(24)
    signature = keys.sign(key, token_request_message(device_id, ts, nonce))
    try:
        answer = post_json(
            base_url, "/api/v1/devices/token",
            {"device_id": device_id, "ts": ts, "nonce": nonce, "signature": signature},
        )
    except RelayHTTPError as exc:
        if exc.problem.get("code") == "device_revoked":
            raise RevokedError("the relay says this device is revoked; ask an admin to re-enroll it") from exc
        raise
    return str(answer["access_token"])
