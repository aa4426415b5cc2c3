"""Traversal and junk in every path parameter (SaltStack CVE-2020-11652 was a path
traversal through a parameter) get 404 before authentication, so before any handler
or storage ever sees them: the same request without a token still answers 404, not
401.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import Relay

from coact.relay.app import ROUTES, create_app
from coact.relay.routing import Route
from coact.relay.settings import Settings

PARAM_ROUTES = [r for r in create_app(Settings(data_dir=Path("/nonexistent")))[ROUTES] if "{" in r.path]
BAD_VALUES = [
    "..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2fkeys", "..%5C..%5Cwindows",
    "dev_%00", "%00", "dev_01jx0000000000000000000000%00.json", "%2Fetc%2Fpasswd", "%2F",
    "C:%5Cwindows%5Cwin.ini", "dev_01JX0000000000000000000000", "dev_01jx00000000000000000000000",
    "x" * 300, "%ff%fe", "dev_01jx000000000000000000000%20",
]


def _raw(relay: Relay, method: str, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` byte for byte: no client-side normalisation of dots or escapes."""
    parts = urlsplit(relay.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=b"{}" if method in ("POST", "PATCH") else None, headers=headers)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def _rid(route: Route) -> str:
    return f"{route.method} {route.path}"


@pytest.mark.parametrize("route", PARAM_ROUTES, ids=_rid)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_path_parameter_is_404_before_authentication(relay: Relay, route: Route, value: str) -> None:
    path = route.path.replace("{id}", value).replace("{name}", value)
    status, headers, body = _raw(relay, route.method, path)
    assert status == 404, f"{route.method} {path} -> {status} {body[:200]!r}"
    assert headers.get("Content-Type", "").startswith("application/problem+json")
    assert json.loads(body)["status"] == 404


@pytest.mark.parametrize("route", [r for r in PARAM_ROUTES if r.access.kind == "user"], ids=_rid)
@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "..%2F..%2F", "%2e%2e/%2e%2e"])
def test_bad_path_parameter_is_404_with_a_token_too(relay: Relay, route: Route, value: str) -> None:
    admin, _ = relay.new_admin()
    path = route.path.replace("{id}", value)
    status, _headers, body = _raw(relay, route.method, path, admin.token)
    assert status == 404, f"{route.method} {path} -> {status} {body[:200]!r}"


# What each id route's "no such ..." names; a new route with an {id} is added here.
MISSING = {
    "/api/v1/devices/enrollment-codes/{id}/revoke": "no such enrollment code",
    "/api/v1/devices/{id}": "no such device",
    "/api/v1/devices/{id}/revoke": "no such device",
    "/api/v1/tasks/{id}": "no such task",
    "/api/v1/tasks/{id}/cancel": "no such task",
    "/api/v1/admin/users/{id}": "no such user",
}


@pytest.mark.parametrize("route", [r for r in PARAM_ROUTES if "{id}" in r.path], ids=_rid)
def test_a_malformed_id_answers_which_kind_of_thing_is_missing(relay: Relay, route: Route) -> None:
    """"no such task", not "no such resource" (issue 15)."""
    status, _headers, body = _raw(relay, route.method, route.path.replace("{id}", "tsk_bogus"))
    assert status == 404
    assert json.loads(body)["detail"] == MISSING[route.path]
