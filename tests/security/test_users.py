"""Users, roles and the admin users API against real relays on SQLite and PostgreSQL.

Covers issue 3 items 1 and 4: org-scoped user management, role changes and disabling
taking effect at once (a disabled user's still-valid access token is refused), the
last-admin guard, password change ending every session, and ``GET /me/activity``.
"""

from __future__ import annotations

import uuid
from typing import Any

from harness import PASSWORD, Api, Relay, wait_for

NEW_PASSWORD = "another long passphrase 42"


def new_user(relay: Relay, admin: Api, role: str) -> tuple[Api, dict[str, Any]]:
    """Create a user in the admin's org and log them in."""
    email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
    user = admin.ok("POST", "/api/v1/admin/users", {"email": email, "role": role, "password": PASSWORD})["user"]
    api = relay.api()
    pair = api.ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
    api.token = pair["access_token"]
    return api, {**user, "refresh_token": pair["refresh_token"]}


def patch(api: Api, user_id: str, body: Any) -> Any:
    return api.request("PATCH", f"/api/v1/admin/users/{user_id}", body)


def audit_kinds(api: Api, *expected: tuple[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The org's audit (kind, data) pairs, once every ``expected`` one reached ClickHouse
    (the relay forwards its events a moment after the change)."""

    def read() -> list[tuple[str, dict[str, Any]]] | None:
        items = api.ok("GET", "/api/v1/audit?limit=5000")["items"]
        pairs = [(r["kind"], r["data"]) for r in items]
        return pairs if all(e in pairs for e in expected) else None

    found: list[tuple[str, dict[str, Any]]] = wait_for(read, timeout=10, what=f"audit events {expected}")
    return found


def test_admin_adds_users_with_roles_and_lists_them_in_pages(relay: Relay) -> None:
    admin, me = relay.new_admin()
    viewer, viewer_user = new_user(relay, admin, "viewer")
    operator, operator_user = new_user(relay, admin, "operator")
    assert viewer.ok("GET", "/api/v1/me")["user"]["role"] == "viewer"
    assert viewer_user["org_id"] == me["org_id"]

    first = admin.ok("GET", "/api/v1/admin/users?limit=2")
    assert [u["id"] for u in first["items"]] == [me["id"], viewer_user["id"]]
    rest = admin.ok("GET", f"/api/v1/admin/users?limit=2&cursor={first['next_cursor']}")
    assert [u["id"] for u in rest["items"]] == [operator_user["id"]]
    assert rest["next_cursor"] is None
    assert "password_hash" not in first["items"][0]

    # Only admins manage users; the answer is a clear 403.
    for api in (viewer, operator):
        assert api.get("/api/v1/admin/users").status == 403
        assert api.get("/api/v1/admin/stats").status == 403
        assert patch(api, api_user_id(api), {"role": "admin"}).status == 403
        assert api.post("/api/v1/admin/users", {"email": "x@example.com", "role": "admin", "password": PASSWORD}).status == 403
    assert relay.api().get("/api/v1/admin/users").status == 401

    audit_kinds(admin, ("user.created", {"user_id": viewer_user["id"], "role": "viewer", "by": me["id"]}))


def api_user_id(api: Api) -> str:
    return str(api.ok("GET", "/api/v1/me")["user"]["id"])


def test_orgs_never_see_or_change_each_others_users(relay: Relay) -> None:
    admin_a, user_a = relay.new_admin()
    admin_b, _ = relay.new_admin()
    _, viewer_a = new_user(relay, admin_a, "viewer")
    listed = {u["id"] for u in admin_b.ok("GET", "/api/v1/admin/users")["items"]}
    assert user_a["id"] not in listed
    assert viewer_a["id"] not in listed
    for target in (user_a["id"], viewer_a["id"]):
        answer = patch(admin_b, target, {"disabled": True})
        assert answer.status == 404, answer.body
        # Indistinguishable from a user that does not exist at all.
        assert answer.body == patch(admin_b, "usr_00000000000000000000000000", {"disabled": True}).body
    assert admin_a.ok("GET", "/api/v1/admin/users")["items"][1]["disabled"] is False


def test_role_change_takes_effect_on_the_existing_token(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    viewer, viewer_user = new_user(relay, admin, "viewer")
    assert viewer.get("/api/v1/admin/users").status == 403
    changed = patch(admin, viewer_user["id"], {"role": "admin"})
    assert changed.status == 200
    assert changed.body["user"]["role"] == "admin"
    assert viewer.get("/api/v1/admin/users").status == 200  # same token, new role
    assert patch(admin, viewer_user["id"], {"role": "viewer"}).status == 200
    assert viewer.get("/api/v1/admin/users").status == 403


def test_disabling_a_user_ends_their_access_and_sessions_at_once(relay: Relay) -> None:
    admin, me = relay.new_admin()
    operator, user = new_user(relay, admin, "operator")
    second_session = relay.api().ok("POST", "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    assert operator.get("/api/v1/me").status == 200

    answer = patch(admin, user["id"], {"disabled": True})
    assert answer.status == 200
    assert answer.body["user"]["disabled"] is True
    # The access token has minutes left, yet it is refused now.
    refused = operator.get("/api/v1/me")
    assert refused.status == 401, refused.body
    for token in (user["refresh_token"], second_session["refresh_token"]):
        assert relay.api().post("/api/v1/auth/refresh", {"refresh_token": token}).status == 401
    login = relay.api().post("/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    assert login.status == 401
    assert login.body["detail"] == "email or password is wrong"

    # Enabling lets them log in again, but the old sessions stay dead.
    assert patch(admin, user["id"], {"disabled": False}).body["user"]["disabled"] is False
    assert relay.api().post("/api/v1/auth/refresh", {"refresh_token": user["refresh_token"]}).status == 401
    relay.api().ok("POST", "/api/v1/auth/login", {"email": user["email"], "password": PASSWORD})

    audit_kinds(
        admin,
        ("user.disabled", {"user_id": user["id"], "by": me["id"], "sessions_revoked": 2}),
        ("user.enabled", {"user_id": user["id"], "by": me["id"]}),
    )


def test_the_last_enabled_admin_cannot_demote_or_disable_themselves(relay: Relay) -> None:
    admin, me = relay.new_admin()
    for change in ({"role": "operator"}, {"disabled": True}):
        answer = patch(admin, me["id"], change)
        assert answer.status == 409, answer.body
        assert "last enabled admin" in answer.body["detail"]
    assert admin.ok("GET", "/api/v1/me")["user"]["role"] == "admin"
    other, other_user = new_user(relay, admin, "admin")
    assert patch(admin, me["id"], {"role": "viewer"}).status == 200
    # Now the other admin is the last one.
    assert patch(other, other_user["id"], {"disabled": True}).status == 409


def test_bad_admin_input_is_refused_without_side_effects(relay: Relay) -> None:
    admin, me = relay.new_admin()
    _, viewer = new_user(relay, admin, "viewer")
    before = admin.ok("GET", "/api/v1/admin/users")["items"]
    cases = [
        (patch(admin, viewer["id"], {}), 400, "give role and/or disabled"),
        (patch(admin, viewer["id"], {"role": "root"}), 400, "body.role"),
        (patch(admin, viewer["id"], {"role": "admin", "is_admin": True}), 400, "is_admin"),
        (patch(admin, viewer["id"], {"disabled": "yes please"}), 400, "body.disabled"),
        (admin.request("PATCH", "/api/v1/admin/users/..%2f..%2fetc", {"role": "admin"}), 404, ""),
        (admin.request("PATCH", "/api/v1/admin/users/%2e%2e", {"role": "admin"}), 404, ""),
        (admin.post("/api/v1/admin/users", {"email": viewer["email"], "role": "viewer", "password": PASSWORD}), 409, "cannot be given to a new user"),
        (admin.post("/api/v1/admin/users", {"email": "weak@example.com", "role": "viewer", "password": "short"}), 400, "body.password"),
        (admin.post("/api/v1/admin/users", {"email": "nobody", "role": "viewer", "password": PASSWORD}), 400, "body.email"),
        (admin.post("/api/v1/admin/users", {"email": "r@example.com", "role": "owner", "password": PASSWORD}), 400, "body.role"),
    ]
    for answer, status, detail in cases:
        assert answer.status == status, answer.body
        assert detail in answer.body["detail"], answer.body
    assert admin.ok("GET", "/api/v1/admin/users")["items"] == before
    assert relay.api().post("/api/v1/auth/login", {"email": "weak@example.com", "password": "short"}).status == 401


def test_stats_count_the_callers_org(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    relay.new_admin()  # another org, not counted
    _, viewer = new_user(relay, admin, "viewer")
    new_user(relay, admin, "operator")
    patch(admin, viewer["id"], {"disabled": True})
    stats = admin.ok("GET", "/api/v1/admin/stats")
    assert stats == {
        "users": {"total": 3, "disabled": 1, "enabled_by_role": {"admin": 1, "operator": 1}},
        "devices": {"total": 0, "by_status": {}},
        "tasks": {"total": 0, "by_status": {}},
        "devices_online": 0,
    }


def test_password_change_ends_every_session_and_returns_a_new_pair(relay: Relay) -> None:
    admin, me = relay.new_admin()
    other_session = relay.api().ok("POST", "/api/v1/auth/login", {"email": me["email"], "password": PASSWORD})

    wrong = admin.post("/api/v1/me/password", {"current_password": "not my password", "new_password": NEW_PASSWORD})
    assert wrong.status == 403, wrong.body
    weak = admin.post("/api/v1/me/password", {"current_password": PASSWORD, "new_password": "short"})
    assert weak.status == 400
    assert "body.new_password" in weak.body["detail"]
    # Nothing changed yet: both sessions still refresh.
    other_session = relay.api().ok("POST", "/api/v1/auth/refresh", {"refresh_token": other_session["refresh_token"]})

    pair = admin.ok("POST", "/api/v1/me/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert set(pair) >= {"access_token", "refresh_token", "expires_in"}
    for token in (me["refresh_token"], other_session["refresh_token"]):
        assert relay.api().post("/api/v1/auth/refresh", {"refresh_token": token}).status == 401
    fresh = relay.api(pair["access_token"])
    assert fresh.ok("GET", "/api/v1/me")["user"]["id"] == me["id"]
    relay.api().ok("POST", "/api/v1/auth/refresh", {"refresh_token": pair["refresh_token"]})
    assert relay.api().post("/api/v1/auth/login", {"email": me["email"], "password": PASSWORD}).status == 401
    relay.api().ok("POST", "/api/v1/auth/login", {"email": me["email"], "password": NEW_PASSWORD})
    audit_kinds(
        fresh,
        ("user.password_change_failed", {"user_id": me["id"]}),
        ("user.password_changed", {"user_id": me["id"], "sessions_revoked": 2}),
    )


def test_my_activity_is_mine_only(relay: Relay) -> None:
    admin, me = relay.new_admin()
    viewer, viewer_user = new_user(relay, admin, "viewer")
    _, operator_user = new_user(relay, admin, "operator")
    patch(admin, viewer_user["id"], {"role": "approver"})

    def activity(api: Api, *kinds: str) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = api.ok("GET", "/api/v1/me/activity")["items"]
        have = {r["kind"] for r in items}
        return items if set(kinds) <= have else None

    mine = wait_for(lambda: activity(admin, "user.signup", "user.login", "user.created", "user.role_changed"),
                    what="the admin's activity in ClickHouse")
    assert all(r["device_id"].startswith("relay:") for r in mine)
    assert all(me["id"] in (r["data"].get("user_id"), r["data"].get("by")) for r in mine)

    theirs = wait_for(lambda: activity(viewer, "user.created", "user.login", "user.role_changed"),
                      what="the viewer's activity")
    assert all(viewer_user["id"] in (r["data"].get("user_id"), r["data"].get("by")) for r in theirs)
    ids = {r["data"].get("user_id") for r in theirs}
    assert operator_user["id"] not in ids
    assert me["id"] not in ids

    page = admin.ok("GET", "/api/v1/me/activity?limit=1")
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    second = admin.ok("GET", f"/api/v1/me/activity?limit=1&cursor={page['next_cursor']}")
    assert second["items"]
    assert second["items"][0]["seq"] > page["items"][0]["seq"]
    assert admin.get("/api/v1/me/activity?cursor=nonsense").status == 400
    assert admin.get("/api/v1/me/activity?since=yesterday").status == 400
    assert relay.api().get("/api/v1/me/activity").status == 401
