"""Every route and every agent message type has an explicit authorization decision,
and a real relay enforces it: no token → 401, wrong role → 403, the wrong kind of
token → 401, another org's id → 404 exactly like an id that does not exist.

SaltStack CVE-2020-11651 was a master method nobody had put behind authentication;
the table below makes "which routes are public" a reviewed list. A route added to the
relay without a line here fails ``test_every_route_has_the_expected_access_rule``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Api, Relay
from principals import add_user

from coact.relay import hub
from coact.relay.app import ROUTES, create_app
from coact.relay.ids import new_id
from coact.relay.routing import Route
from coact.relay.settings import Settings
from coact.shared import keys
from coact.shared.clock import to_rfc3339, utc_now
from coact.shared.protocol import AGENT_MESSAGE_TYPES, token_request_message

PUBLIC = "public"
DEVICE = "device"
ADMIN = "user: admin"
OPERATOR = "user: admin, operator"
ANY_USER = "user: admin, approver, operator, viewer"

# The reviewed authorization decision of every route the relay serves.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/init.js"): PUBLIC,
    ("GET", "/docs/assets/{name}"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("POST", "/api/v1/auth/signup"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): ANY_USER,
    ("GET", "/api/v1/me"): ANY_USER,
    ("GET", "/api/v1/me/activity"): ANY_USER,
    ("POST", "/api/v1/me/password"): ANY_USER,
    ("GET", "/api/v1/admin/users"): ADMIN,
    ("POST", "/api/v1/admin/users"): ADMIN,
    ("PATCH", "/api/v1/admin/users/{id}"): ADMIN,
    ("GET", "/api/v1/admin/stats"): ADMIN,
    ("POST", "/api/v1/devices/enrollment-codes"): ADMIN,
    ("GET", "/api/v1/devices/enrollment-codes"): ADMIN,
    ("POST", "/api/v1/devices/enrollment-codes/{id}/revoke"): ADMIN,
    # Public in the routing sense: the enrollment code, and the device key's signature,
    # are the credentials (tests/security/test_enrollment.py, test_device_tokens.py).
    ("POST", "/api/v1/devices/enroll"): PUBLIC,
    ("POST", "/api/v1/devices/token"): PUBLIC,
    ("GET", "/api/v1/devices"): ANY_USER,
    ("GET", "/api/v1/devices/{id}"): ANY_USER,
    ("POST", "/api/v1/devices/{id}/revoke"): ADMIN,
    ("GET", "/api/v1/agent/ws"): DEVICE,
    ("POST", "/api/v1/tasks"): OPERATOR,
    ("GET", "/api/v1/tasks"): ANY_USER,
    ("GET", "/api/v1/tasks/{id}"): ANY_USER,
    ("POST", "/api/v1/tasks/{id}/cancel"): OPERATOR,
    ("GET", "/api/v1/audit"): ANY_USER,
    ("GET", "/api/v1/audit/batches"): ANY_USER,
    ("GET", "/api/v1/audit/keys"): ANY_USER,
    ("GET", "/api/v1/ws"): ANY_USER,
}

# A valid body for routes with an id that take one, so that a cross-org call reaches
# the handler (and the store) rather than stopping at validation.
SAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/v1/admin/users/{id}"): {"role": "admin"},
}


def _app_routes() -> list[Route]:
    app = create_app(Settings(data_dir=Path("/nonexistent/never-opened")))
    return list(app[ROUTES])


APP_ROUTES = _app_routes()
GUARDED = [r for r in APP_ROUTES if r.access.kind != "public"]
USER_ROUTES = [r for r in APP_ROUTES if r.access.kind == "user"]


def _rid(route: Route) -> str:
    return f"{route.method} {route.path}"


# -- the declared table -------------------------------------------------------------


def test_every_route_has_the_expected_access_rule() -> None:
    served = {(r.method, r.path): r.access.describe() for r in APP_ROUTES}
    assert len(served) == len(APP_ROUTES), "a route is registered twice"
    unreviewed = sorted(set(served) - set(EXPECTED))
    assert not unreviewed, f"routes without a reviewed access rule in this test: {unreviewed}"
    gone = sorted(set(EXPECTED) - set(served))
    assert not gone, f"routes in this table that the relay no longer serves: {gone}"
    wrong = {k: (served[k], EXPECTED[k]) for k in served if served[k] != EXPECTED[k]}
    assert not wrong, f"access rules that differ from the reviewed table (served, expected): {wrong}"


def test_every_agent_message_type_has_a_rule() -> None:
    assert set(hub.MESSAGE_RULES) == set(AGENT_MESSAGE_TYPES)
    assert all(rule.strip() for rule in hub.MESSAGE_RULES.values())


# -- a real relay enforces it ----------------------------------------------------------


class World:
    """Org A (admin, operator, viewer, a device with a task, an unused enrollment code)
    and org B (an admin), on one relay."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.admin, self.admin_user = relay.new_admin()
        self.operator, _ = add_user(relay, self.admin, self.admin_user, "operator")
        self.viewer, self.viewer_user = add_user(relay, self.admin, self.admin_user, "viewer")
        self.other_admin, _ = relay.new_admin()
        self.device_key = keys.generate_private_key()
        code = self.admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
        self.device_id = self.admin.ok("POST", "/api/v1/devices/enroll", {
            "code": code, "public_key": keys.public_key_b64(self.device_key), "name": "a-1", "platform": "linux",
        })["device_id"]
        self.code_id = self.admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["id"]
        self.task_id = self.operator.ok("POST", "/api/v1/tasks", {
            "device_id": self.device_id, "action": "file.stat", "params": {"path": "/"},
        })["id"]

    def device_token(self) -> str:
        ts, nonce = to_rfc3339(utc_now()), new_id("nonce")
        signature = keys.sign(self.device_key, token_request_message(self.device_id, ts, nonce))
        return str(self.admin.ok("POST", "/api/v1/devices/token", {
            "device_id": self.device_id, "ts": ts, "nonce": nonce, "signature": signature,
        })["access_token"])

    def real_id(self, route: Route) -> str:
        """An id of org A's resource of the kind this route's ``{id}`` names."""
        for prefix, value in (
            ("/api/v1/devices/enrollment-codes/", self.code_id),
            ("/api/v1/devices/", self.device_id),
            ("/api/v1/tasks/", self.task_id),
            ("/api/v1/admin/users/", self.viewer_user["id"]),
        ):
            if route.path.startswith(prefix):
                return value
        raise AssertionError(f"{_rid(route)}: add the kind of its {{id}} to World.real_id")


@pytest.fixture(scope="module")
def world(relay: Relay) -> Iterator[World]:
    return World(relay)


def _path(route: Route, ident: str | None = None) -> str:
    return route.path.replace("{id}", ident or new_id("zz"))


def _call(api: Api, route: Route, path: str, token: str | None) -> Any:
    body = SAMPLE_BODIES.get((route.method, route.path), {} if route.body is not None else None)
    return api.request(route.method, path, body, token=token or "")


def _is_problem(answer: Any, status: int) -> None:
    assert answer.status == status, f"expected {status}, got {answer.status}: {answer.body}"
    assert answer.headers.get("Content-Type", "").startswith("application/problem+json")
    assert answer.body["status"] == status
    assert answer.body["detail"]


@pytest.mark.parametrize("route", GUARDED, ids=_rid)
def test_no_token_is_401(world: World, route: Route) -> None:
    answer = _call(world.relay.api(), route, _path(route), None)
    _is_problem(answer, 401)
    assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("route", [r for r in USER_ROUTES if "viewer" not in r.access.roles], ids=_rid)
def test_wrong_role_is_403(world: World, route: Route) -> None:
    callers = [world.viewer] + ([world.operator] if "operator" not in route.access.roles else [])
    for api in callers:
        _is_problem(_call(api, route, _path(route), api.token), 403)


@pytest.mark.parametrize("route", USER_ROUTES, ids=_rid)
def test_device_token_on_user_route_is_401(world: World, route: Route) -> None:
    _is_problem(_call(world.relay.api(), route, _path(route), world.device_token()), 401)


@pytest.mark.parametrize("route", [r for r in APP_ROUTES if r.access.kind == "device"], ids=_rid)
def test_user_token_on_device_route_is_401(world: World, route: Route) -> None:
    _is_problem(_call(world.relay.api(), route, _path(route), world.admin.token), 401)


@pytest.mark.parametrize("route", [r for r in USER_ROUTES if "{id}" in r.path], ids=_rid)
def test_another_orgs_id_is_404_like_an_unknown_one(world: World, route: Route) -> None:
    outsider = world.other_admin
    foreign = _call(outsider, route, _path(route, world.real_id(route)), outsider.token)
    unknown = _call(outsider, route, _path(route, new_id(world.real_id(route).split("_")[0])), outsider.token)
    _is_problem(foreign, 404)
    assert (foreign.status, foreign.body) == (unknown.status, unknown.body), "the answer leaks that the id exists"
    # ...and nothing of org A changed.
    assert world.admin.ok("GET", f"/api/v1/devices/{world.device_id}")["status"] == "active"
    assert world.admin.ok("GET", f"/api/v1/tasks/{world.task_id}")["status"] == "queued"
    codes = world.admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"]
    assert world.code_id in [c["id"] for c in codes]
    assert world.viewer.ok("GET", "/api/v1/me")["user"]["role"] == "viewer"


def test_another_orgs_lists_are_empty(world: World) -> None:
    outsider = world.other_admin
    assert outsider.ok("GET", "/api/v1/devices")["items"] == []
    assert outsider.ok("GET", "/api/v1/devices/enrollment-codes")["items"] == []
    assert outsider.ok("GET", f"/api/v1/tasks?device_id={world.device_id}")["items"] == []
    assert outsider.ok("GET", f"/api/v1/audit?device_id={world.device_id}")["items"] == []
    assert json.dumps(outsider.ok("GET", "/api/v1/audit")).find(world.device_id) == -1
