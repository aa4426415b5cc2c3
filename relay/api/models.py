"""Request and response bodies of the HTTP API: the same models validate requests,
shape responses and generate ``/openapi.json``.

Request models forbid unknown fields, so a typo is an error rather than a silently
ignored option.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from coact.shared.protocol import TaskStatus

T = TypeVar("T")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Page(Response, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class PageQuery(Request):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=64)


class Problem(Response):
    type: str
    title: str
    status: int
    detail: str


# -- auth -------------------------------------------------------------------------------

Email = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class SignupRequest(Request):
    email: str = Email
    password: str = Field(min_length=1, max_length=1024)
    org_name: str | None = Field(default=None, min_length=1, max_length=200)


class LoginRequest(Request):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(Request):
    refresh_token: str = Field(min_length=1, max_length=256)


class TokenPair(Response):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class User(Response):
    id: str
    org_id: str
    email: str
    role: str
    disabled: bool
    created_at: str


class UserEnvelope(Response):
    user: User


class SignupAccepted(Response):
    """The answer to every acceptable signup, whether or not the email already had an
    account (decision 66): nothing in it, its status or its timing tells them apart."""

    email: str = Field(description="The normalised email; log in with it and the password given.")
    detail: str


# -- devices ---------------------------------------------------------------------------

Tag = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class EnrollmentCodeRequest(Request):
    ttl_s: int | None = Field(default=None, ge=60)
    tags: list[str] = Field(default_factory=list, max_length=32)


class EnrollmentCode(Response):
    id: str = Field(description="The code's id: list it, revoke it. Not a secret.")
    code: str
    expires_at: str
    tags: list[str]


class EnrollmentCodeInfo(Response):
    """An enrollment code as admins list it: everything but the code itself."""

    id: str
    org_id: str
    created_by: str
    created_at: str
    expires_at: str
    tags: list[str]
    status: Literal["active", "used", "revoked", "expired"]
    used_at: str | None = None
    used_by_device: str | None = None
    revoked_at: str | None = None


class EnrollRequest(Request):
    code: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=40, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    platform: str = Field(min_length=1, max_length=64)


class Enrolled(Response):
    device_id: str
    org_id: str
    root_key_fingerprint: str = Field(
        description="Fingerprint of the relay signing key the agent pins (the org root key builds on this)."
    )
    relay_public_key: str


class DeviceTokenRequest(Request):
    device_id: str = Field(min_length=1, max_length=64)
    ts: str = Field(max_length=40)
    nonce: str = Field(min_length=16, max_length=128)
    signature: str = Field(max_length=128)


class DeviceToken(Response):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Device(Response):
    id: str
    org_id: str
    name: str
    platform: str
    public_key: str
    tags: list[str]
    status: Literal["active", "revoked"]
    online: bool
    enrolled_at: str
    last_seen: str | None
    telemetry: dict[str, Any] | None


# -- tasks ------------------------------------------------------------------------------


class CreateTaskRequest(Request):
    device_id: str = Field(min_length=1, max_length=64)
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    expires_at: str | None = Field(default=None, max_length=40)


class Risk(Response):
    level: Literal["low", "medium", "high", "critical"]
    score: int
    reasons: list[str]


class TaskResult(Response):
    ok: bool
    denied: bool = Field(default=False, description="True when the device's local policy refused the action.")
    output: Any = None
    error: str | None = None
    artifacts: list[str] = Field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None


class Task(Response):
    id: str
    org_id: str
    device_id: str
    action: str
    params: dict[str, Any]
    status: TaskStatus
    risk: Risk
    created_by: str
    created_at: str
    updated_at: str
    timeout_s: float
    expires_at: str
    dispatched_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int
    result: TaskResult | None = None


class TaskQuery(PageQuery):
    device_id: str | None = Field(default=None, max_length=64)
    status: TaskStatus | None = None


# -- audit -----------------------------------------------------------------------------


class AuditQuery(Request):
    device_id: str | None = Field(default=None, max_length=64)
    task_id: str | None = Field(default=None, max_length=64)
    since: str | None = Field(default=None, max_length=40)
    limit: int = Field(default=500, ge=1, le=5000)
    cursor: str | None = Field(default=None, max_length=128)


class BatchQuery(Request):
    device_id: str | None = Field(default=None, max_length=128)
    limit: int = Field(default=1000, ge=1, le=5000)
    cursor: str | None = Field(default=None, max_length=160)


class AuditRecordOut(Response):
    device_id: str
    seq: int
    ts: str
    kind: str
    task_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditBatchOut(Response):
    device_id: str
    last_seq: int
    head_hash: str
    signature: str
    public_key: str


class AuditKeys(Response):
    keys: dict[str, str] = Field(description="chain id → base64 Ed25519 public key")


class Health(Response):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- users, roles, passwords (admin and me) ---------------------------------------------

Role = Literal["admin", "operator", "approver", "viewer"]


class CreateUserRequest(Request):
    email: str = Email
    role: Role
    password: str = Field(min_length=1, max_length=1024, description="The user's first password; share it out of band.")


class UpdateUserRequest(Request):
    role: Role | None = None
    disabled: bool | None = None


class ChangePasswordRequest(Request):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class UserCounts(Response):
    total: int
    disabled: int
    enabled_by_role: dict[str, int]


class StatusCounts(Response):
    total: int
    by_status: dict[str, int]


class OrgStats(Response):
    users: UserCounts
    devices: StatusCounts
    tasks: StatusCounts
    devices_online: int = Field(description="Devices with a live session on this relay process.")


class ActivityQuery(Request):
    since: str | None = Field(default=None, max_length=40)
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=128)
