"""Devices: enrollment codes, enrollment, signed-challenge device tokens, inventory,
revocation, and the agent WebSocket."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from coact.relay.api.context import services
from coact.relay.api.models import (
    Device,
    DeviceToken,
    DeviceTokenRequest,
    Enrolled,
    EnrollmentCode,
    EnrollmentCodeInfo,
    EnrollmentCodeRequest,
    EnrollRequest,
    Page,
    PageQuery,
)
from coact.relay.errors import BadRequest, NotFound, Unauthorized
from coact.relay.hub import CLOSE_REVOKED
from coact.relay.routing import ADMIN, ANY_USER, DEVICE, PUBLIC, Call, RouteTable
from coact.relay.services import Services
from coact.relay.storage import Row
from coact.relay.tokens import TokenError, hash_enrollment_code, new_enrollment_code
from coact.shared import keys
from coact.shared.clock import from_rfc3339
from coact.shared.errors import SignatureError
from coact.shared.protocol import token_request_message

routes = RouteTable("devices")


def device_view(device: Row, online: bool) -> Device:
    return Device.model_validate({**device, "online": online})


@routes.route("POST", "/api/v1/devices/enrollment-codes", access=ADMIN, body=EnrollmentCodeRequest,
              response=EnrollmentCode, status=201,
              summary="Create a one-time, short-lived enrollment code for a new device", errors=(400,))
async def create_enrollment_code(call: Call) -> EnrollmentCode:
    svc = services(call.request)
    body: EnrollmentCodeRequest = call.body
    ttl = body.ttl_s or svc.settings.enrollment_code_ttl_s
    if ttl > svc.settings.enrollment_code_max_ttl_s:
        raise BadRequest(f"body.ttl_s: at most {svc.settings.enrollment_code_max_ttl_s} seconds")
    for tag in body.tags:
        if not tag or len(tag) > 64 or not all(c.isalnum() or c in "_.:-" for c in tag):
            raise BadRequest(f"body.tags: {tag!r} is not a valid tag (letters, digits, _ . : -)")
    code, code_hash = new_enrollment_code()
    row = await svc.store.create_enrollment_code(call.user.org_id, call.user.subject, code_hash, body.tags, ttl)
    return EnrollmentCode(id=row["id"], code=code, expires_at=row["expires_at"], tags=row["tags"])


def enrollment_code_view(row: Row, now: str) -> EnrollmentCodeInfo:
    if row["revoked_at"] is not None:
        status = "revoked"
    elif row["used_at"] is not None:
        status = "used"
    elif row["expires_at"] <= now:
        status = "expired"
    else:
        status = "active"
    return EnrollmentCodeInfo.model_validate({**row, "status": status})


# Registered before GET /devices/{id} so that the static path is never read as an id.
@routes.route("GET", "/api/v1/devices/enrollment-codes", access=ADMIN, response=Page[EnrollmentCodeInfo],
              summary="The org's enrollment codes that can still be used (never the codes themselves)")
async def list_enrollment_codes(call: Call) -> Page[EnrollmentCodeInfo]:
    svc = services(call.request)
    rows = await svc.store.list_enrollment_codes(call.user.org_id)
    now = svc.store.now()
    return Page[EnrollmentCodeInfo](items=[enrollment_code_view(r, now) for r in rows])


@routes.route("POST", "/api/v1/devices/enrollment-codes/{id}/revoke", access=ADMIN, response=EnrollmentCodeInfo,
              summary="Revoke an unused enrollment code: enrolling with it then fails with 410",
              errors=(404, 409))
async def revoke_enrollment_code(call: Call) -> EnrollmentCodeInfo:
    svc = services(call.request)
    row = await svc.store.revoke_enrollment_code(call.user.org_id, call.path_id(), call.user.subject)
    return enrollment_code_view(row, svc.store.now())


@routes.route("POST", "/api/v1/devices/enroll", access=PUBLIC, body=EnrollRequest, response=Enrolled,
              status=201, summary="Enroll a device with an enrollment code and its Ed25519 public key",
              errors=(400, 409, 410))
async def enroll(call: Call) -> Enrolled:
    svc = services(call.request)
    body: EnrollRequest = call.body
    try:
        keys.public_key_from_b64(body.public_key)
        code_hash = hash_enrollment_code(body.code)
    except SignatureError as exc:
        raise BadRequest(f"body.public_key: {exc}") from exc
    except TokenError as exc:
        raise BadRequest(f"body.code: {exc}") from exc
    device = await svc.store.enroll_device(code_hash, body.name, body.platform, body.public_key)
    return Enrolled(
        device_id=device["id"],
        org_id=device["org_id"],
        root_key_fingerprint=keys.fingerprint(svc.audit.relay_public_key),
        relay_public_key=svc.audit.relay_public_key,
    )


@routes.route("POST", "/api/v1/devices/token", access=PUBLIC, body=DeviceTokenRequest, response=DeviceToken,
              summary="Get a short-lived device token by signing a fresh request with the device key",
              errors=(400, 401, 503))
async def device_token(call: Call) -> DeviceToken:
    # Public in the routing sense: the caller proves itself with the signature below.
    # The connect slot is taken first, so a refusal in a reconnect storm costs nothing
    # more; a granted one is kept for the device's socket, or given back on a failure.
    svc = services(call.request)
    body: DeviceTokenRequest = call.body
    admission = svc.hub.admit(body.device_id)
    try:
        return await _device_token(svc, body)
    except BaseException:
        admission.abandon()
        raise


async def _device_token(svc: Services, body: DeviceTokenRequest) -> DeviceToken:
    refused = Unauthorized("device token request refused")
    device = await svc.store.device_unscoped(body.device_id)
    if device is None:
        raise refused
    try:
        keys.verify(device["public_key"], token_request_message(body.device_id, body.ts, body.nonce), body.signature)
        stamp = from_rfc3339(body.ts)
    except (SignatureError, ValueError) as exc:
        raise refused from exc
    skew = timedelta(seconds=svc.settings.token_request_skew_s)
    if abs(svc.clock.now() - stamp) > skew:
        raise Unauthorized("device token request timestamp is too far from the relay clock")
    if device["status"] != "active":
        raise Unauthorized("device is revoked", code="device_revoked")
    if not await svc.store.spend_device_nonce(device["id"], body.nonce, 2 * svc.settings.token_request_skew_s):
        raise Unauthorized("device token request was replayed")
    token, _claims = svc.issuer.issue_device_token(device["id"], device["org_id"])
    return DeviceToken(access_token=token, expires_in=svc.settings.device_token_ttl_s)


@routes.route("GET", "/api/v1/devices", access=ANY_USER, query=PageQuery, response=Page[Device],
              summary="List the org's devices with presence and telemetry")
async def list_devices(call: Call) -> Page[Device]:
    svc = services(call.request)
    query: PageQuery = call.query
    rows = await svc.store.list_devices(call.user.org_id, query.limit + 1, query.cursor)
    items = [device_view(r, svc.hub.is_online(r["id"])) for r in rows[: query.limit]]
    return Page[Device](items=items, next_cursor=items[-1].id if len(rows) > query.limit else None)


@routes.route("GET", "/api/v1/devices/{id}", access=ANY_USER, response=Device, summary="One device", errors=(404,))
async def get_device(call: Call) -> Device:
    svc = services(call.request)
    device = await svc.store.device(call.user.org_id, call.path_id())
    if device is None:
        raise NotFound("no such device")
    return device_view(device, svc.hub.is_online(device["id"]))


@routes.route("POST", "/api/v1/devices/{id}/revoke", access=ADMIN, response=Device,
              summary="Revoke a device: its live connection ends at once and its tokens stop working",
              errors=(404,))
async def revoke_device(call: Call) -> Device:
    svc = services(call.request)
    device = await svc.store.revoke_device(call.user.org_id, call.path_id(), call.user.subject)
    await svc.hub.disconnect(device["id"], CLOSE_REVOKED, "device revoked by an admin")
    return device_view(device, False)


@routes.route("GET", "/api/v1/agent/ws", access=DEVICE, content_type="websocket",
              summary="The agent WebSocket (protocol: docs/api/ws.md)", errors=(401, 403, 503))
async def agent_ws(call: Call) -> web.StreamResponse:
    assert call.principal is not None  # routing admits only authenticated devices here
    return await services(call.request).hub.handle(call.request, call.principal)


