"""Org administration: the org's users (invite, list, change role, disable, enable)
and the org's counts. Admins only; everything is scoped to the caller's org."""

from __future__ import annotations

import math

from coact.relay.api.auth import user_view
from coact.relay.api.context import services
from coact.relay.api.models import (
    CreateUserRequest,
    OrgStats,
    Page,
    PageQuery,
    UpdateUserRequest,
    User,
    UserEnvelope,
)
from coact.relay.errors import BadRequest, Conflict, EmailTaken, TooManyRequests
from coact.relay.passwords import check_password_strength
from coact.relay.routing import ADMIN, Call, RouteTable

routes = RouteTable("admin")


@routes.route("GET", "/api/v1/admin/users", access=ADMIN, query=PageQuery, response=Page[User],
              summary="The org's users, oldest first")
async def list_users(call: Call) -> Page[User]:
    svc = services(call.request)
    query: PageQuery = call.query
    rows = await svc.store.list_users(call.user.org_id, query.limit + 1, query.cursor)
    items = [User.model_validate(user_view(r)) for r in rows[: query.limit]]
    more = len(rows) > query.limit and items
    return Page[User](items=items, next_cursor=items[-1].id if more else None)


EMAIL_REFUSED = "this email cannot be given to a new user"


@routes.route("POST", "/api/v1/admin/users", access=ADMIN, body=CreateUserRequest, response=UserEnvelope,
              status=201, summary="Add a user with a role and a first password to the caller's org",
              errors=(400, 409, 429, 503))
async def create_user(call: Call) -> UserEnvelope:
    svc = services(call.request)
    body: CreateUserRequest = call.body
    org_id = call.user.org_id
    # Anyone can sign up and be an admin, so refused emails are an enumeration oracle
    # however they are worded: they are few per org, and audited (decision 67).
    wait = svc.email_refusals.retry_after(org_id)
    if wait:
        raise TooManyRequests(f"too many refused emails in this org; try again in {math.ceil(wait)} s",
                              retry_after=math.ceil(wait))
    problem = check_password_strength(body.password)
    if problem:
        raise BadRequest(f"body.password: {problem}")
    email = body.email.strip().lower()
    password_hash = await svc.passwords.hash(body.password)
    try:
        user = await svc.store.create_user(org_id, email, password_hash, body.role, call.user.subject)
    except EmailTaken:
        # One answer whether the account is in this org or another one.
        svc.email_refusals.fail(org_id)
        await svc.store.record_event(org_id, "user.create_refused", {"email": email, "by": call.user.subject})
        raise Conflict(EMAIL_REFUSED) from None
    return UserEnvelope.model_validate({"user": user_view(user)})


@routes.route("PATCH", "/api/v1/admin/users/{id}", access=ADMIN, body=UpdateUserRequest, response=UserEnvelope,
              summary="Change a user's role, or disable or enable them (disabling ends their sessions)",
              errors=(400, 404, 409))
async def update_user(call: Call) -> UserEnvelope:
    svc = services(call.request)
    body: UpdateUserRequest = call.body
    if body.role is None and body.disabled is None:
        raise BadRequest("body: give role and/or disabled")
    user = await svc.store.update_user(
        call.user.org_id, call.path_id(), call.user.subject, role=body.role, disabled=body.disabled
    )
    return UserEnvelope.model_validate({"user": user_view(user)})


@routes.route("GET", "/api/v1/admin/stats", access=ADMIN, response=OrgStats,
              summary="Counts of the org's users, devices and tasks")
async def stats(call: Call) -> OrgStats:
    svc = services(call.request)
    counts = await svc.store.org_stats(call.user.org_id)
    devices = await svc.store.device_public_keys(call.user.org_id)
    online = sum(1 for device_id in devices if svc.hub.is_online(device_id))
    return OrgStats.model_validate({**counts, "devices_online": online})
