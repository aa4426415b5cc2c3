"""The one place that turns errors into RFC 9457 ``application/problem+json`` answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from coact.relay.errors import RelayError, Unauthorized

log = logging.getLogger("coact.relay.http")

PROBLEM_BASE = "https://coact.dev/problems/"


def problem_response(status: int, slug: str, title: str, detail: str, **extra: object) -> web.Response:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": 'Bearer realm="coact"'} if status == 401 else None
    if status in (429, 503) and "retry_after" in extra:
        headers = {"Retry-After": str(extra["retry_after"])}
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/problem+json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RelayError as exc:
        level = exc.log_level or (logging.WARNING if isinstance(exc, Unauthorized) or exc.status >= 500
                                  else logging.INFO)
        log.log(level, "%s %s -> %d %s", request.method, request.path, exc.status, exc.detail)
        answer = problem_response(exc.status, exc.slug, exc.title, exc.detail, **exc.extra)
        if exc.status == 408:
            answer.force_close()  # the rest of a dripped body is not worth waiting for
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        log.info("%s %s -> %d", request.method, request.path, exc.status)
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            detail = "request body is larger than this relay accepts"
        return problem_response(exc.status, exc.reason.lower().replace(" ", "-"), exc.reason, detail)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal-error", "Internal error", "the relay failed; the error is logged")
