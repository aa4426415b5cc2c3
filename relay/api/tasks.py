"""Tasks: create (validated, risk-assessed, persisted before dispatch), list, get, cancel."""

from __future__ import annotations

from coact.policy.actions import validate_params
from coact.policy.errors import ParamsError
from coact.policy.risk import assess
from coact.relay.api.context import services
from coact.relay.api.models import CreateTaskRequest, Page, Task, TaskQuery
from coact.relay.errors import BadRequest, NotFound, TooManyRequests
from coact.relay.routing import ANY_USER, OPERATOR, Call, RouteTable
from coact.relay.storage import Row, page_was_cut
from coact.shared.canonical import canonical_json
from coact.shared.clock import from_rfc3339, to_rfc3339
from coact.shared.errors import CanonicalizationError

routes = RouteTable("tasks")


def task_view(task: Row) -> Task:
    return Task.model_validate(task)


@routes.route("POST", "/api/v1/tasks", access=OPERATOR, body=CreateTaskRequest, response=Task, status=201,
              summary="Create a task for a device; it is queued until the device is online",
              errors=(400, 404, 409, 429))
async def create_task(call: Call) -> Task:
    svc = services(call.request)
    body: CreateTaskRequest = call.body
    wait = svc.task_quotas.retry_after(call.user.subject, call.user.org_id)
    if wait:
        raise TooManyRequests(f"task creation quota reached; try again in {wait} s", retry_after=wait)
    try:
        params = validate_params(body.action, body.params)
        # The agent journals and audits the params as canonical JSON: what has no
        # such form could never be recorded there (decision 49).
        canonical_json(params)
    except ParamsError as exc:
        raise BadRequest(str(exc)) from exc
    except CanonicalizationError as exc:
        raise BadRequest(f"params: no canonical JSON form ({exc})") from exc
    now = svc.clock.now()
    if body.expires_at is not None:
        try:
            expires = from_rfc3339(body.expires_at)
        except ValueError as exc:
            raise BadRequest(f"body.expires_at: {exc}") from exc
        if expires <= now:
            raise BadRequest("body.expires_at: already in the past")
        expires_at = to_rfc3339(expires)
    else:
        expires_at = svc.store.later(svc.settings.task_default_ttl_s)
    svc.task_quotas.take(call.user.subject, call.user.org_id)  # a valid request, stored or not
    risk = assess(body.action, params)
    # A device connected to this relay gets the task straight from here; otherwise it
    # waits in the queue for the device's session, here or on another relay.
    direct = svc.hub.is_online(body.device_id)
    task = await svc.store.create_task(
        org_id=call.user.org_id,
        device_id=body.device_id,
        action=body.action,
        params=params,
        risk={"level": risk.level, "score": risk.score, "reasons": list(risk.reasons)},
        status="dispatched" if direct else "queued",
        created_by=call.user.subject,
        timeout_s=body.timeout_s or svc.settings.task_default_timeout_s,
        expires_at=expires_at,
    )
    svc.events.publish(call.user.org_id, "task",
                       {"task_id": task["id"], "device_id": body.device_id, "status": task["status"]})
    if direct:
        await svc.hub.send_task(task)
    return task_view(task)


@routes.route("GET", "/api/v1/tasks", access=ANY_USER, query=TaskQuery, response=Page[Task],
              summary="List tasks, newest first, optionally by device and status; a page holds at most limit tasks "
                      "and page_max_bytes of their params and results")
async def list_tasks(call: Call) -> Page[Task]:
    svc = services(call.request)
    query: TaskQuery = call.query
    rows = await svc.store.list_tasks(
        call.user.org_id, device_id=query.device_id, status=query.status, limit=query.limit + 1, cursor=query.cursor,
        max_bytes=svc.settings.page_max_bytes,
    )
    # A page ends at `limit` tasks or at page_max_bytes of them, whichever comes first.
    more = page_was_cut(rows) or len(rows) > query.limit
    items = [task_view(r) for r in rows[: min(query.limit, len(rows) - page_was_cut(rows))]]
    return Page[Task](items=items, next_cursor=items[-1].id if more and items else None)


@routes.route("GET", "/api/v1/tasks/{id}", access=ANY_USER, response=Task,
              summary="One task, with its result once finished", errors=(404,))
async def get_task(call: Call) -> Task:
    task = await services(call.request).store.task(call.user.org_id, call.path_id())
    if task is None:
        raise NotFound("no such task")
    return task_view(task)


@routes.route("POST", "/api/v1/tasks/{id}/cancel", access=OPERATOR, response=Task,
              summary="Cancel a task that has not finished", errors=(404, 409))
async def cancel_task(call: Call) -> Task:
    svc = services(call.request)
    task = await svc.store.cancel_task(call.user.org_id, call.path_id(), call.user.subject)
    svc.events.publish(call.user.org_id, "task", {"task_id": task["id"], "device_id": task["device_id"], "status": "cancelled"})
    return task_view(task)


