"""Everything a request handler needs, built once per app and stored under one AppKey."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from coact.relay.audit import AuditPipeline
from coact.relay.errors import Forbidden, Unauthorized
from coact.relay.events import EventBus
from coact.relay.hub import Hub
from coact.relay.keyring import KeyRing
from coact.relay.passwords import PasswordHasher, PasswordParams, PasswordPool
from coact.relay.ratelimit import FailureWindow, LoginLimits, SignupLimits, TaskQuotas, TokenBuckets
from coact.relay.routing import Access, Principal
from coact.relay.settings import Settings
from coact.relay.storage import Row, Store
from coact.relay.tokens import TokenError, TokenIssuer
from coact.shared.clock import Clock

BEARER_SUBPROTOCOL = "bearer"


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of ``Authorization``, or, on a WebSocket upgrade without that
    header, of ``Sec-WebSocket-Protocol: bearer, <token>`` (browsers cannot set
    headers on a WebSocket; the Origin check of that route is what makes this safe)."""
    header = request.headers.get("Authorization", "")
    if not header and request.headers.get("Upgrade", "").lower() == "websocket":
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if len(offered) == 2 and offered[0] == BEARER_SUBPROTOCOL and offered[1]:
            return offered[1]
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: Store
    keyring: KeyRing
    issuer: TokenIssuer
    passwords: PasswordPool
    events: EventBus
    audit: AuditPipeline
    hub: Hub
    # Per relay process, in memory (see coact.relay.ratelimit).
    login_limits: LoginLimits
    signup_limits: SignupLimits
    # Emails refused to POST /admin/users, per org (decision 67).
    email_refusals: FailureWindow
    task_quotas: TaskQuotas

    async def authenticate(self, request: web.Request, access: Access) -> Principal | None:
        """Resolve the caller for a route; None for public routes and missing tokens."""
        token = bearer_token(request)
        if access.kind == "public" or token is None:
            return None
        try:
            claims = self.issuer.verify(token, access.kind)
        except TokenError as exc:
            raise Unauthorized(f"invalid {access.kind} token: {exc}") from exc
        if access.kind == "user":
            # A disabled account or a changed role takes effect at once, not at token expiry.
            user = await self.store.user_by_id(claims.org_id, claims.subject)
            if user is None or user["disabled"]:
                raise Unauthorized("this account is disabled or gone")
            return Principal("user", user["id"], user["org_id"], user["role"])
        device = await self._active_device(claims.subject, claims.org_id)
        return Principal("device", device["id"], device["org_id"], public_key=device["public_key"])

    async def _active_device(self, device_id: str, org_id: str) -> Row:
        device = await self.store.device_unscoped(device_id)
        if device is None or device["org_id"] != org_id:
            raise Unauthorized("unknown device")
        if device["status"] != "active":
            raise Forbidden("device is revoked", code="device_revoked")
        return device


def password_pool(settings: Settings, clock: Clock) -> PasswordPool:
    hasher = PasswordHasher(
        PasswordParams(settings.password_time_cost, settings.password_memory_kib, settings.password_parallelism)
    )
    return PasswordPool(hasher, workers=settings.password_workers, queue=settings.password_queue,
                        monotonic=clock.monotonic)


def login_limits(settings: Settings, clock: Clock) -> LoginLimits:
    return LoginLimits.create(
        settings.login_max_failures, settings.login_max_per_address, settings.login_window_s, clock.monotonic
    )


def signup_limits(settings: Settings, clock: Clock) -> SignupLimits:
    return SignupLimits.create(
        settings.signup_max_per_address, settings.signup_max_per_relay, settings.signup_window_s, clock.monotonic
    )


def email_refusals(settings: Settings, clock: Clock) -> FailureWindow:
    return FailureWindow(settings.user_create_refusals_per_org, settings.signup_window_s, clock.monotonic)


def task_quotas(settings: Settings, clock: Clock) -> TaskQuotas:
    return TaskQuotas(
        TokenBuckets(settings.task_create_rate_per_user, settings.task_create_burst_per_user, clock.monotonic),
        TokenBuckets(settings.task_create_rate_per_org, settings.task_create_burst_per_org, clock.monotonic),
    )


def token_issuer(settings: Settings, keyring: KeyRing, clock: Clock) -> TokenIssuer:
    return TokenIssuer(
        keyring,
        settings.effective_public_url,
        clock,
        user_ttl=timedelta(seconds=settings.access_token_ttl_s),
        device_ttl=timedelta(seconds=settings.device_token_ttl_s),
    )
