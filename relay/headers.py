"""Security headers on every HTTP response the relay sends.

Agent-reported strings (hostnames, telemetry, results) reach users only inside JSON,
so the browser must never be talked into reading a response as anything else:

* ``X-Content-Type-Options: nosniff`` everywhere (no MIME sniffing of JSON as HTML);
* ``Content-Security-Policy: default-src 'none'`` on everything but the docs page, so
  even a response a browser did render could run nothing and load nothing;
* a strict CSP on the only HTML the relay serves, ``/docs`` (local scripts and styles
  only, no inline script, no framing);
* no framing, no referrer.

Hooked on ``on_response_prepare`` rather than as a middleware, so that it also covers
responses no handler returns (file responses, the 101 of a WebSocket upgrade, and
errors answered by aiohttp itself).
"""

from __future__ import annotations

from aiohttp import web

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    is_docs = request.path == "/docs" or request.path.startswith("/docs/")
    headers["Content-Security-Policy"] = DOCS_CSP if is_docs else API_CSP


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
