"""Errors the relay raises on purpose; ``coact.relay.problems`` turns them into
RFC 9457 ``application/problem+json`` responses in one place.

    CoactError (coact.shared.errors)
    └── RelayError                 status 500 unless a subclass says otherwise
        ├── BadRequest             400  malformed JSON, wrong types, unknown fields/actions
        ├── Unauthorized           401  no, bad or expired credentials
        ├── Forbidden              403  authenticated, but the role may not do this
        ├── NotFound               404  absent, or in another org (never leak which)
        ├── Conflict               409  state does not allow it (e.g. cancel a finished task)
        │   └── EmailTaken         409  the email already has an account (emails are relay-wide)
        ├── RequestTimeout         408  the request body arrived too slowly (the connection closes)
        ├── Gone                   410  enrollment code expired, used or revoked
        ├── PayloadTooLarge        413
        ├── TooManyRequests        429  login attempts over the limit (Retry-After header)
        └── ServiceUnavailable     503  a backing store is down
            ├── ConnectsBusy       503  too many devices connecting at once (Retry-After header)
            └── HashingBusy        503  the password-hashing pool is full (Retry-After header)
"""

from __future__ import annotations

import logging
from typing import Any

from coact.shared.errors import CoactError


class RelayError(CoactError):
    status = 500
    slug = "internal-error"
    title = "Internal error"
    log_level: int | None = None  # None: by status (coact.relay.problems)

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(RelayError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(RelayError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(RelayError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(RelayError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(RelayError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class EmailTaken(Conflict):
    """Raised by the store when an email already has an account, in any org. Routes
    decide what the caller may learn of it (decisions 66, 67)."""


class RequestTimeout(RelayError):
    status = 408
    slug = "request-timeout"
    title = "Request timeout"


class Gone(RelayError):
    status = 410
    slug = "gone"
    title = "Gone"


class PayloadTooLarge(RelayError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class TooManyRequests(RelayError):
    """Over a rate limit; ``retry_after`` (whole seconds) becomes the Retry-After header."""

    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)


class ServiceUnavailable(RelayError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class ConnectsBusy(ServiceUnavailable):
    """A device connect turned away (coact.relay.admission): thousands a second in a
    reconnect storm, so each is logged at DEBUG and the hub logs a summary."""

    log_level = logging.DEBUG

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many devices are connecting; try again after Retry-After", retry_after=retry_after)


class HashingBusy(ServiceUnavailable):
    """A password to hash or check turned away because the hashing pool and its queue
    are full (coact.relay.passwords.PasswordPool): a signup or login flood."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the relay is busy checking passwords; try again after Retry-After", retry_after=retry_after)
