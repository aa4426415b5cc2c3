"""The OpenAPI 3.1 document, generated from the declared routes and their models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from coact.relay.routing import Route

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def build_openapi(routes: list[Route], version: str, server_url: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = []
    for route in routes:
        for model in (route.body, route.response):
            if model is not None and model not in models:
                models.append(model)
    mapping, schema_doc = models_json_schema(
        [(m, "validation" if any(r.body is m for r in routes) else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    components: dict[str, Any] = dict(schema_doc.get("$defs", {}))
    components["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, Any] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": f"{route.handler.__name__}",
            "x-coact-access": route.access.describe(),
            "responses": {},
        }
        if route.access.kind != "public":
            operation["security"] = [{"bearer": []}]
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        if route.query is not None:
            query_schema = route.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if params:
            operation["parameters"] = params
        if route.body is not None:
            ref = mapping[(route.body, "validation")]
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        if route.content_type == "websocket":
            operation["responses"]["101"] = {"description": "Switching protocols to the agent WebSocket"}
        elif route.status == 204:
            operation["responses"]["204"] = {"description": "Done, no content"}
        else:
            body_schema = mapping[(route.response, "serialization")] if route.response else {"type": "object"}
            operation["responses"][str(route.status)] = {
                "description": "Success", "content": {"application/json": {"schema": body_schema}},
            }
        errors = set(route.errors) | {400, 500} | (set() if route.access.kind == "public" else {401, 403})
        if route.body is not None:
            errors |= {408, 413}  # a body too slow (http_body_timeout_s) or too large (max_body_bytes)
        for status in sorted(errors):
            operation["responses"][str(status)] = {
                "description": "Problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Coact relay API", "version": version,
                 "description": "Secure, auditable actions on real devices. See docs/api/."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
