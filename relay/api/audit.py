"""Audit records of the caller's org, straight from ClickHouse, for `coact audit`."""

from __future__ import annotations

from coact.relay.api.context import services
from coact.relay.api.models import AuditBatchOut, AuditKeys, AuditQuery, AuditRecordOut, Page
from coact.relay.errors import BadRequest
from coact.relay.routing import ANY_USER, Call, RouteTable
from coact.shared.clock import from_rfc3339, to_rfc3339

routes = RouteTable("audit")


def _cursor(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    chain, _, seq = text.rpartition("/")
    if not chain or not seq.isdigit():
        raise BadRequest("query.cursor: not a cursor returned by this API")
    return chain, int(seq)


@routes.route("GET", "/api/v1/audit", access=ANY_USER, query=AuditQuery, response=Page[AuditRecordOut],
              summary="Audit records of the caller's org, ordered by chain and seq")
async def list_audit(call: Call) -> Page[AuditRecordOut]:
    svc = services(call.request)
    query: AuditQuery = call.query
    since = None
    if query.since is not None:
        try:
            since = to_rfc3339(from_rfc3339(query.since))
        except ValueError as exc:
            raise BadRequest(f"query.since: {exc}") from exc
    rows = await svc.audit.records(
        call.user.org_id, device_id=query.device_id, task_id=query.task_id, since=since,
        after=_cursor(query.cursor), limit=query.limit + 1,
    )
    items = [AuditRecordOut.model_validate(r) for r in rows[: query.limit]]
    last = items[-1] if items else None
    more = len(rows) > query.limit and last is not None
    return Page[AuditRecordOut](items=items, next_cursor=f"{last.device_id}/{last.seq}" if more and last else None)


@routes.route("GET", "/api/v1/audit/batches", access=ANY_USER, response=Page[AuditBatchOut],
              summary="Signed batch heads of the caller's org, for client-side verification")
async def list_batches(call: Call) -> Page[AuditBatchOut]:
    svc = services(call.request)
    rows = await svc.audit.batches(call.user.org_id)
    return Page[AuditBatchOut](items=[AuditBatchOut.model_validate(r) for r in rows])


@routes.route("GET", "/api/v1/audit/keys", access=ANY_USER, response=AuditKeys,
              summary="Public keys of every audit chain of the caller's org (devices and relays)")
async def audit_keys(call: Call) -> AuditKeys:
    svc = services(call.request)
    return AuditKeys(keys=await svc.audit.public_keys(call.user.org_id))
