"""Declared routes: every HTTP route states its access rule, request and response models.

One table drives three things, so they cannot drift apart: the aiohttp router, the
authorization check done before any handler runs, and the OpenAPI document. A route
without an explicit :class:`Access` cannot be declared.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from coact.relay.errors import BadRequest, Forbidden, NotFound, RequestTimeout, Unauthorized
from coact.relay.jsonbody import decode_json_body

# Seconds a request body may take to arrive (settings.http_body_timeout_s).
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout", float)
DEFAULT_BODY_TIMEOUT_S = 30.0

ROLES = frozenset({"admin", "operator", "approver", "viewer"})
ID_PATTERN = re.compile(r"^[a-z]{2,4}_[0-9a-z]{26}$")


@dataclass(frozen=True)
class Access:
    """Who may call a route: nobody authenticated, a device, or users in ``roles``."""

    kind: Literal["public", "user", "device"]
    roles: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.kind == "user":
            return "user: " + ", ".join(sorted(self.roles))
        return self.kind


PUBLIC = Access("public")
DEVICE = Access("device")
ANY_USER = Access("user", ROLES)
OPERATOR = Access("user", frozenset({"admin", "operator"}))
ADMIN = Access("user", frozenset({"admin"}))


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user (with role) or a device, always within one org."""

    kind: Literal["user", "device"]
    subject: str
    org_id: str
    role: str | None = None
    public_key: str | None = None  # a device's, as read when its token was checked


@dataclass
class Call:
    request: web.Request
    principal: Principal | None
    body: Any = None
    query: Any = None

    @property
    def user(self) -> Principal:
        assert self.principal is not None
        assert self.principal.kind == "user"
        return self.principal

    def path_id(self, name: str = "id") -> str:
        return self.request.match_info[name]


Handler = Callable[[Call], Awaitable[Any]]
Authenticator = Callable[[web.Request, Access], Awaitable[Principal | None]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    content_type: str = "application/json"
    errors: tuple[int, ...] = ()


@dataclass
class RouteTable:
    """Routes of one API area, declared with :meth:`route`."""

    tag: str
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        access: Access,
        summary: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        content_type: str = "application/json",
        errors: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(method, path, handler, access, summary, self.tag, body, query, response,
                      status, content_type, errors)
            )
            return handler

        return register


def _validation_detail(exc: ValidationError, where: str) -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}.{loc}: {error['msg']}" if loc else f"{where}: {error['msg']}")
    return "; ".join(parts)


async def _read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if request.content_type != "application/json":
        raise BadRequest(f"expected Content-Type application/json, got {request.content_type or 'none'}")
    try:
        async with asyncio.timeout(request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT_S)):
            raw = await request.read()
    except TimeoutError:
        # A body dripped a byte at a time would hold the handler and its socket forever.
        raise RequestTimeout("the request body did not arrive in time") from None
    data = decode_json_body(raw) if raw else None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_validation_detail(exc, "body")) from exc


def _read_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    data: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise BadRequest(f"query.{key}: given more than once")
        data[key] = values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_validation_detail(exc, "query")) from exc


def _serialize(route: Route, result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204)
    text = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return web.Response(text=text, status=route.status, content_type="application/json")


def _path_params(path: str) -> list[str]:
    return [segment[1:-1] for segment in path.split("/") if segment.startswith("{") and segment.endswith("}")]


def resource_name(path: str, param: str) -> str:
    """What a path parameter names, for "no such ...": ``{device_id}`` is a device, and
    a bare ``{id}`` is what the segment before it lists (``/tasks/{id}``: a task)."""
    if param != "id":
        return param.removesuffix("_id").replace("_", " ")
    segments = path.split("/")
    listed = segments[segments.index("{id}") - 1]
    return listed.removesuffix("s").replace("-", " ")


def bind(route: Route, authenticate: Authenticator) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler: check the path ids, authorise, validate input, serialise output."""

    missing = {name: resource_name(route.path, name) for name in _path_params(route.path)}

    async def endpoint(request: web.Request) -> web.StreamResponse:
        for name, value in request.match_info.items():
            if name.endswith("id") and not ID_PATTERN.match(value):
                # Malformed ids (traversal attempts included) are simply absent.
                raise NotFound(f"no such {missing[name]}")
        principal = await authenticate(request, route.access)
        if route.access.kind != "public":
            if principal is None:
                raise Unauthorized("a bearer token is required")
            if principal.kind != route.access.kind:
                raise Forbidden(f"this route is for {route.access.kind}s")
            if principal.kind == "user" and principal.role not in route.access.roles:
                raise Forbidden(f"role {principal.role} may not do this")
        call = Call(request, principal)
        if route.query is not None:
            call.query = _read_query(request, route.query)
        if route.body is not None:
            call.body = await _read_body(request, route.body)
        return _serialize(route, await route.handler(call))

    return endpoint


def install(app: web.Application, tables: list[RouteTable], authenticate: Authenticator) -> list[Route]:
    routes = [r for table in tables for r in table.routes]
    for route in routes:
        app.router.add_route(route.method, route.path, bind(route, authenticate))
    return routes
