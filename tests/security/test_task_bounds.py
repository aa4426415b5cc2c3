"""Bounded answers and quotas around tasks (issue 14 item 5): a page of GET /tasks is
capped by bytes as well as count and its cursor still walks every task once; task
creation has quotas per user and per org; /audit/batches is paginated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import PASSWORD, Api, Relay
from pg import BACKENDS, relay_on
from principals import RawDevice

ENV = {"COACT_PAGE_MAX_BYTES": "500000",
       "COACT_TASK_CREATE_BURST_PER_USER": "10", "COACT_TASK_CREATE_RATE_PER_USER": "0.001",
       "COACT_TASK_CREATE_BURST_PER_ORG": "15", "COACT_TASK_CREATE_RATE_PER_ORG": "0.001"}
CONTENT = "x" * 200_000  # two such tasks fit in a 500,000-byte page, three do not


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_on(request.param, tmp_path_factory.mktemp("tasks") / "data", ENV) as server:
        yield server


def new_task(api: Api, device_id: str, content: str = "small") -> Any:
    return api.post("/api/v1/tasks", {"device_id": device_id, "action": "file.write",
                                      "params": {"path": "/tmp/x", "content": content}})


def operator(relay: Relay, admin: Api) -> Api:
    email = f"op-{uuid.uuid4().hex[:10]}@example.com"
    admin.ok("POST", "/api/v1/admin/users", {"email": email, "role": "operator", "password": PASSWORD})
    api = relay.api()
    api.token = api.ok("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})["access_token"]
    return api


def test_a_task_page_is_capped_by_bytes_and_the_cursor_walks_every_task_once(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    created = [new_task(admin, device.device_id, CONTENT).body["id"] for _ in range(7)]
    small = new_task(admin, device.device_id).body["id"]
    seen: list[str] = []
    sizes: list[int] = []
    cursor = None
    while True:
        page = admin.ok("GET", "/api/v1/tasks?limit=50" + (f"&cursor={cursor}" if cursor else ""))
        sizes.append(len(page["items"]))
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [small, *reversed(created)]  # newest first, each once
    assert max(sizes) <= 3  # the small one and two big ones at most
    first_page = admin.ok("GET", "/api/v1/tasks?limit=50")["items"]
    assert [len(t["params"]["content"]) for t in first_page] == [len("small"), len(CONTENT), len(CONTENT)]
    # One task larger than the budget still comes, alone.
    assert len(admin.ok("GET", f"/api/v1/tasks?limit=50&cursor={small}")["items"]) == 2


def test_task_creation_quotas_per_user_and_per_org(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    device = RawDevice(relay.url, admin)
    first, second = operator(relay, admin), operator(relay, admin)
    assert [new_task(first, device.device_id).status for _ in range(10)] == [201] * 10
    refused = new_task(first, device.device_id)
    assert refused.status == 429, refused.body
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.body["retry_after"] == int(refused.headers["Retry-After"])
    # The org's budget (15) has 5 left for the other user, then the org waits too.
    assert [new_task(second, device.device_id).status for _ in range(6)] == [201] * 5 + [429]
    # Another org is not affected.
    other, _ = relay.new_admin()
    assert new_task(other, RawDevice(relay.url, other).device_id).status == 201


def test_audit_batches_take_a_limit_and_a_cursor(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    assert admin.ok("GET", "/api/v1/audit/batches?limit=1") == {"items": [], "next_cursor": None}
    for bad in ("limit=0", "limit=5001", "cursor=nonsense", "cursor=chain/x"):
        answer = admin.get(f"/api/v1/audit/batches?{bad}")
        assert answer.status == 400, (bad, answer.body)
