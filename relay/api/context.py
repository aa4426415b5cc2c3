"""Access to the app's services from a handler."""

from __future__ import annotations

from aiohttp import web

from coact.relay.services import Services

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
