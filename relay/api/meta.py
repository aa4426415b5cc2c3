"""Health, readiness, the OpenAPI document and the interactive docs (local assets only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coact.relay.api.context import services
from coact.relay.api.models import Health
from coact.relay.errors import NotFound
from coact.relay.routing import PUBLIC, Call, RouteTable

routes = RouteTable("meta")
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Coact relay API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"""
DOCS_INIT = "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#ui'});\n"


@routes.route("GET", "/healthz", access=PUBLIC, response=Health, summary="Liveness: the process answers")
async def healthz(call: Call) -> Health:
    return Health(status="ok")


@routes.route("GET", "/readyz", access=PUBLIC, response=Health, errors=(503,),
              summary="Readiness: the state database and the audit store answer")
async def readyz(call: Call) -> web.Response:
    svc = services(call.request)
    checks: dict[str, str] = {}
    for name, probe in (("database", svc.store.ping), ("audit", svc.audit.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:  # readiness reports every failure, whatever it is
            checks[name] = f"failing: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return web.Response(text=body.model_dump_json(), status=200 if ok else 503, content_type="application/json")


@routes.route("GET", "/openapi.json", access=PUBLIC, summary="This API as an OpenAPI 3.1 document")
async def openapi(call: Call) -> dict[str, Any]:
    return call.request.app[OPENAPI]


@routes.route("GET", "/docs", access=PUBLIC, content_type="text/html", summary="Interactive API docs")
async def docs_page(call: Call) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")


@routes.route("GET", "/docs/init.js", access=PUBLIC, content_type="application/javascript",
              summary="Script that starts the interactive docs")
async def docs_init(call: Call) -> web.Response:
    return web.Response(text=DOCS_INIT, content_type="application/javascript")


# Only these files of the vendored Swagger UI are served: no directory listing, no paths.
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "application/javascript"}


@routes.route("GET", "/docs/assets/{name}", access=PUBLIC, content_type="application/octet-stream",
              summary="Swagger UI assets, served from the installed package (no CDN)", errors=(404,))
async def docs_asset(call: Call) -> web.StreamResponse:
    import swagger_ui_bundle

    name = call.request.match_info["name"]
    if name not in DOCS_ASSETS:
        raise NotFound(f"no docs asset {name!r}")
    path = f"{swagger_ui_bundle.swagger_ui_path}/{name}"
    return web.FileResponse(path, headers={"Content-Type": DOCS_ASSETS[name], "Cache-Control": "max-age=86400"})
