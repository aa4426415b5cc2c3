"""Audit records of the caller's org, straight from ClickHouse, for `coact audit`."""

from __future__ import annotations

from typing import Any

from coact.relay.api.context import services
from coact.relay.api.models import (
    AuditBatchOut,
    AuditKeys,
    AuditQuery,
    AuditRecordOut,
    BatchQuery,
    Page,
)
from coact.relay.errors import BadRequest
from coact.relay.routing import ANY_USER, Call, RouteTable
from coact.shared.clock import from_rfc3339, to_rfc3339

routes = RouteTable("audit")


def parse_chain_cursor(cursor: str | None) -> tuple[str, int] | None:
    """A ``chain/seq`` cursor of this API as a (chain, seq) pair; None for no cursor."""
    if cursor is None:
        return None
    chain, _, seq = cursor.rpartition("/")
    if not chain or not seq.isdigit() or len(seq) > 19:
        raise BadRequest("query.cursor: not a cursor returned by this API")
    return chain, int(seq)


async def audit_page(
    call: Call, *, since: str | None, cursor: str | None, limit: int, **filters: Any
) -> Page[AuditRecordOut]:
    """One page of the caller's org's audit records, keyset-paginated by (chain, seq)."""
    after = parse_chain_cursor(cursor)
    if since is not None:
        try:
            since = to_rfc3339(from_rfc3339(since))
        except ValueError as exc:
            raise BadRequest(f"query.since: {exc}") from exc
    rows = await services(call.request).audit.records(
        call.user.org_id, since=since, after=after, limit=limit + 1, **filters
    )
    items = [AuditRecordOut.model_validate(r) for r in rows[:limit]]
    more = len(rows) > limit and items
    return Page[AuditRecordOut](items=items, next_cursor=f"{items[-1].device_id}/{items[-1].seq}" if more else None)


@routes.route("GET", "/api/v1/audit", access=ANY_USER, query=AuditQuery, response=Page[AuditRecordOut],
              summary="Audit records of the caller's org, ordered by chain and seq")
async def list_audit(call: Call) -> Page[AuditRecordOut]:
    query: AuditQuery = call.query
    return await audit_page(call, since=query.since, cursor=query.cursor, limit=query.limit,
                            device_id=query.device_id, task_id=query.task_id)


@routes.route("GET", "/api/v1/audit/batches", access=ANY_USER, query=BatchQuery, response=Page[AuditBatchOut],
              summary="Signed batch heads of the caller's org, for client-side verification, ordered by chain "
                      "and last seq", errors=(400,))
async def list_batches(call: Call) -> Page[AuditBatchOut]:
    svc = services(call.request)
    query: BatchQuery = call.query
    rows = await svc.audit.batches(call.user.org_id, query.device_id, after=parse_chain_cursor(query.cursor),
                                   limit=query.limit + 1)
    items = [AuditBatchOut.model_validate(r) for r in rows[: query.limit]]
    more = len(rows) > query.limit and items
    return Page[AuditBatchOut](items=items,
                               next_cursor=f"{items[-1].device_id}/{items[-1].last_seq}" if more else None)


@routes.route("GET", "/api/v1/audit/keys", access=ANY_USER, response=AuditKeys,
              summary="Public keys of every audit chain of the caller's org (devices and relays)")
async def audit_keys(call: Call) -> AuditKeys:
    svc = services(call.request)
    return AuditKeys(keys=await svc.audit.public_keys(call.user.org_id))
