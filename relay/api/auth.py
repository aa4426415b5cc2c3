"""User accounts: signup, login, refresh-token rotation, logout, and who am I."""

from __future__ import annotations

from typing import Any

from coact.relay.api.audit import audit_page
from coact.relay.api.context import services
from coact.relay.api.models import (
    ActivityQuery,
    AuditRecordOut,
    ChangePasswordRequest,
    LoginRequest,
    Page,
    RefreshRequest,
    SignupAccepted,
    SignupRequest,
    TokenPair,
    UserEnvelope,
)
from coact.relay.errors import (
    BadRequest,
    EmailTaken,
    Forbidden,
    HashingBusy,
    TooManyRequests,
    Unauthorized,
)
from coact.relay.passwords import check_password_strength
from coact.relay.routing import ANY_USER, PUBLIC, Call, RouteTable
from coact.relay.services import Services
from coact.relay.storage import Row
from coact.relay.tokens import hash_refresh_token, new_refresh_token

routes = RouteTable("auth")

BAD_LOGIN = "email or password is wrong"


def user_view(user: Row) -> dict[str, Any]:
    return {k: user[k] for k in ("id", "org_id", "email", "role", "disabled", "created_at")}


async def _token_pair(svc: Services, user: Row, family_id: str | None = None) -> TokenPair:
    access, _claims = svc.issuer.issue_user_token(user["id"], user["org_id"], user["role"])
    refresh, refresh_hash = new_refresh_token()
    await svc.store.issue_refresh_token(user, refresh_hash, svc.settings.refresh_token_ttl_s, family_id)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=svc.settings.access_token_ttl_s)


SIGNUP_ACCEPTED = ("if this email had no account, it now has one, the admin of a new organisation: "
                   "log in with it and the password given")


@routes.route("POST", "/api/v1/auth/signup", access=PUBLIC, body=SignupRequest, response=SignupAccepted,
              status=202, summary="Create an organisation and its first user, an admin, if the email has no account",
              errors=(400, 403, 429, 503))
async def signup(call: Call) -> SignupAccepted:
    svc = services(call.request)
    body: SignupRequest = call.body
    if not svc.settings.allow_signup:
        raise Forbidden("signup is off on this relay: its admin adds users (POST /api/v1/admin/users), and a new "
                        "relay's first admin is made on its machine with `coact relay create-admin`")
    address = client_address(call)
    wait = svc.signup_limits.retry_after(address)
    if wait:
        raise TooManyRequests(f"too many signups; try again in {wait} s", retry_after=wait)
    problem = check_password_strength(body.password)
    if problem:
        raise BadRequest(f"body.password: {problem}")
    svc.signup_limits.attempt(address)
    email = body.email.strip().lower()
    # The same work whether or not the email is taken: a real hash and an insert.
    try:
        password_hash = await svc.passwords.hash(body.password)
    except HashingBusy:
        svc.signup_limits.withdraw(address)
        raise
    try:
        await svc.store.create_org_with_admin(email, password_hash, body.org_name or email)
    except EmailTaken:
        existing = await svc.store.user_by_email(email)
        if existing is not None:
            # The account's admins see the attempt; the caller learns nothing.
            await svc.store.record_event(existing["org_id"], "user.signup_refused", {"user_id": existing["id"]})
    return SignupAccepted(email=email, detail=SIGNUP_ACCEPTED)


def client_address(call: Call) -> str:
    # The TCP peer. X-Forwarded-For is not trusted: anyone could set it to dodge the
    # per-address limit or to frame another address.
    return call.request.remote or "unknown"


def check_login_limits(svc: Services, account: str, address: str) -> None:
    wait = svc.login_limits.retry_after(account, address)
    if wait:
        # The same answer whether or not the account exists.
        raise TooManyRequests(f"too many failed logins; try again in {wait} s", retry_after=wait)


@routes.route("POST", "/api/v1/auth/login", access=PUBLIC, body=LoginRequest, response=TokenPair,
              summary="Exchange email and password for an access and a refresh token", errors=(400, 401, 429, 503))
async def login(call: Call) -> TokenPair:
    svc = services(call.request)
    body: LoginRequest = call.body
    email, address = body.email.strip().lower(), client_address(call)
    check_login_limits(svc, email, address)
    svc.login_limits.attempt(email, address)
    user = await svc.store.user_by_email(email)
    try:
        if user is None:
            # Same work, same answer as a wrong password: no account enumeration.
            await svc.passwords.dummy_verify(body.password)
            raise Unauthorized(BAD_LOGIN)
        matches = await svc.passwords.verify(user["password_hash"], body.password)
    except HashingBusy:
        svc.login_limits.withdraw(email, address)  # not a guess: nothing was checked
        raise
    if not matches or user["disabled"]:
        await svc.store.record_event(user["org_id"], "user.login_failed", {"user_id": user["id"]})
        raise Unauthorized(BAD_LOGIN)
    svc.login_limits.succeeded(email, address)
    if svc.passwords.needs_rehash(user["password_hash"]):
        await svc.store.set_password_hash(user["id"], await svc.passwords.hash(body.password))
    await svc.store.record_event(user["org_id"], "user.login", {"user_id": user["id"]})
    return await _token_pair(svc, user)


@routes.route("POST", "/api/v1/auth/refresh", access=PUBLIC, body=RefreshRequest, response=TokenPair,
              summary="Rotate a refresh token: the old one is spent; reusing it revokes its family",
              errors=(400, 401))
async def refresh(call: Call) -> TokenPair:
    svc = services(call.request)
    body: RefreshRequest = call.body
    outcome, token = await svc.store.consume_refresh_token(
        hash_refresh_token(body.refresh_token), client_address(call), svc.settings.refresh_reuse_grace_s
    )
    if outcome == "rotated":
        raise Unauthorized("refresh token was already rotated a moment ago; use the newest one")
    if outcome == "reused":
        raise Unauthorized("refresh token was already used; its session has been revoked")
    if outcome != "ok" or token is None:
        raise Unauthorized("refresh token is not valid")
    user = await svc.store.user_by_id(token["org_id"], token["user_id"])
    if user is None or user["disabled"]:
        raise Unauthorized("this account is disabled or gone")
    return await _token_pair(svc, user, token["family_id"])


@routes.route("POST", "/api/v1/auth/logout", access=ANY_USER, body=RefreshRequest, status=204,
              summary="Revoke the session (refresh token family) of this refresh token", errors=(401,))
async def logout(call: Call) -> None:
    svc = services(call.request)
    body: RefreshRequest = call.body
    await svc.store.revoke_refresh_family(hash_refresh_token(body.refresh_token), call.user.subject)
    return None


@routes.route("GET", "/api/v1/me", access=ANY_USER, response=UserEnvelope, summary="The calling user")
async def me(call: Call) -> UserEnvelope:
    svc = services(call.request)
    user = await svc.store.user_by_id(call.user.org_id, call.user.subject)
    if user is None:
        raise Unauthorized("this account is gone")
    return UserEnvelope.model_validate({"user": user_view(user)})


@routes.route("GET", "/api/v1/me/activity", access=ANY_USER, query=ActivityQuery, response=Page[AuditRecordOut],
              summary="The caller's own audit events: what they did and what was done to their account",
              errors=(400,))
async def my_activity(call: Call) -> Page[AuditRecordOut]:
    query: ActivityQuery = call.query
    return await audit_page(call, since=query.since, cursor=query.cursor, limit=query.limit,
                            actor=call.user.subject)


@routes.route("POST", "/api/v1/me/password", access=ANY_USER, body=ChangePasswordRequest, response=TokenPair,
              summary="Change the caller's password; every session ends and a new token pair is returned",
              errors=(400, 403, 429, 503))
async def change_my_password(call: Call) -> TokenPair:
    svc = services(call.request)
    body: ChangePasswordRequest = call.body
    user = await svc.store.user_by_id(call.user.org_id, call.user.subject)
    if user is None:
        raise Unauthorized("this account is gone")
    # A stolen access token must not become a password-guessing oracle: the same
    # per-account and per-address limits as login apply.
    address = client_address(call)
    check_login_limits(svc, user["email"], address)
    svc.login_limits.attempt(user["email"], address)
    if not await svc.passwords.verify(user["password_hash"], body.current_password):
        await svc.store.record_event(user["org_id"], "user.password_change_failed", {"user_id": user["id"]})
        raise Forbidden("body.current_password: that is not your current password")
    svc.login_limits.succeeded(user["email"], address)
    problem = check_password_strength(body.new_password)
    if problem:
        raise BadRequest(f"body.new_password: {problem}")
    new_hash = await svc.passwords.hash(body.new_password)
    await svc.store.change_password(user["org_id"], user["id"], new_hash)
    return await _token_pair(svc, user)


@routes.route("GET", "/.well-known/jwks.json", access=PUBLIC, summary="The relay's public token-signing keys (JWKS)")
async def jwks(call: Call) -> dict[str, Any]:
    return services(call.request).keyring.jwks()
