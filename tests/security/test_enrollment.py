"""Enrollment codes are single-use, short-lived, revocable and scoped to one org; a
failed enrollment creates nothing; re-enrolling a device name makes a new identity
that inherits nothing (Velociraptor CVE-2022-35629 let one client claim another's
identity)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Api, Relay, wait_for
from pg import relay_on
from principals import RawDevice

from coact.shared import keys
from coact.shared.chain import GENESIS, ChainHead, make_record, sign_batch


def _enroll(relay: Relay, code: str, name: str = "dev", public_key: str | None = None) -> Any:
    return relay.api().post("/api/v1/devices/enroll", {
        "code": code, "public_key": public_key or keys.public_key_b64(keys.generate_private_key()),
        "name": name, "platform": "linux",
    })


def _gone(answer: Any, detail: str) -> None:
    assert answer.status == 410, answer.body
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.body["detail"] == detail


def _device_ids(admin: Api) -> list[str]:
    return [d["id"] for d in admin.ok("GET", "/api/v1/devices")["items"]]


def test_codes_are_listed_by_id_never_by_value(relay: Relay) -> None:
    admin, admin_user = relay.new_admin()
    created = admin.ok("POST", "/api/v1/devices/enrollment-codes", {"ttl_s": 600, "tags": ["lab"]})
    assert created["id"].startswith("enr_")
    listing = admin.get("/api/v1/devices/enrollment-codes")
    assert listing.status == 200
    [item] = listing.body["items"]
    assert item == {**item, "id": created["id"], "status": "active", "tags": ["lab"],
                    "org_id": admin_user["org_id"], "created_by": admin_user["id"]}
    assert "code" not in item
    secret = created["code"].replace("-", "")
    assert secret not in json.dumps(listing.body).replace("-", "")


def test_a_code_enrolls_once(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    assert _enroll(relay, code, "first").status == 201
    before = _device_ids(admin)
    _gone(_enroll(relay, code, "second"), "enrollment code was already used")
    _gone(_enroll(relay, code.lower().replace("-", " "), "third"), "enrollment code was already used")
    assert _device_ids(admin) == before
    assert admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"] == []


def test_a_revoked_code_enrolls_nothing(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    created = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})
    keep = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})
    revoked = admin.ok("POST", f"/api/v1/devices/enrollment-codes/{created['id']}/revoke")
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"]
    assert admin.ok("POST", f"/api/v1/devices/enrollment-codes/{created['id']}/revoke")["status"] == "revoked"
    assert [c["id"] for c in admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"]] == [keep["id"]]
    _gone(_enroll(relay, created["code"]), "enrollment code was revoked")
    assert _device_ids(admin) == []
    # A code that already enrolled a device is not revoked: the device is.
    assert _enroll(relay, keep["code"]).status == 201
    used = admin.post(f"/api/v1/devices/enrollment-codes/{keep['id']}/revoke")
    assert used.status == 409
    assert "revoke the device instead" in used.body["detail"]


def test_revocation_is_audited(relay: Relay) -> None:
    admin, _ = relay.new_admin()
    created = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})
    admin.ok("POST", f"/api/v1/devices/enrollment-codes/{created['id']}/revoke")

    def revoked_event() -> bool:
        records = admin.ok("GET", "/api/v1/audit")["items"]
        return any(r["kind"] == "enrollment_code.revoked" and r["data"]["code_id"] == created["id"] for r in records)

    wait_for(revoked_event, timeout=20, what="enrollment_code.revoked in the audit log")


@pytest.fixture(scope="module")
def short_lived_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """A relay whose default code lifetime is one second (the API's minimum is 60)."""
    with relay_on("sqlite", tmp_path_factory.mktemp("short") / "data", {"COACT_ENROLLMENT_CODE_TTL_S": "1"}) as server:
        yield server


def test_an_expired_code_enrolls_nothing(short_lived_relay: Relay) -> None:
    relay = short_lived_relay
    admin, _ = relay.new_admin()
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    # The listing holds only codes that can still be used: wait for the relay itself
    # to consider this one expired, rather than for a fixed time.
    wait_for(lambda: admin.ok("GET", "/api/v1/devices/enrollment-codes")["items"] == [],
             timeout=10, what="the code to expire")
    _gone(_enroll(relay, code), "enrollment code has expired")
    assert _device_ids(admin) == []


async def test_reenrolling_a_name_gets_a_fresh_identity_that_inherits_nothing(relay: Relay, tmp_path: Path) -> None:
    admin, _ = relay.new_admin()
    old = RawDevice(relay.url, admin, name="laptop")
    task = admin.ok("POST", "/api/v1/tasks", {"device_id": old.device_id, "action": "file.stat", "params": {"path": "/"}})
    ws, welcome = await old.session()
    assert welcome["audit_seq"] == 0
    record = make_record(GENESIS, device_id=old.device_id, kind="test.event", ts="2026-01-01T00:00:00.000000Z", data={})
    signature = sign_batch(old.key, old.device_id, ChainHead(record["seq"], record["hash"]))
    await ws.send(json.dumps({"v": 1, "type": "audit_batch", "records": [record], "signature": signature}))
    while (reply := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "audit_ack":
        assert reply["type"] != "audit_nack", reply
    await ws.close()
    admin.ok("POST", f"/api/v1/devices/{old.device_id}/revoke")

    # The old public key cannot be enrolled again, under any name.
    code = admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"]
    again = _enroll(relay, code, "laptop", public_key=keys.public_key_b64(old.key))
    assert again.status == 409
    # A new key under the same name is a new device that has nothing of the old one.
    new = RawDevice(relay.url, admin, name="laptop", code=admin.ok("POST", "/api/v1/devices/enrollment-codes", {})["code"])
    assert new.device_id != old.device_id
    device = admin.ok("GET", f"/api/v1/devices/{new.device_id}")
    assert (device["status"], device["last_seen"], device["telemetry"]) == ("active", None, None)
    assert admin.ok("GET", f"/api/v1/tasks?device_id={new.device_id}")["items"] == []
    assert admin.ok("GET", f"/api/v1/tasks/{task['id']}")["device_id"] == old.device_id
    assert admin.ok("GET", f"/api/v1/audit?device_id={new.device_id}")["items"] == []
    ws, welcome = await new.session()
    assert (welcome["audit_seq"], welcome["audit_hash"]) == (0, GENESIS.hash)
    # The old device's token requests keep failing: the name is not the identity.
    refused = relay.api().post("/api/v1/devices/token", old.token_request())
    assert refused.status == 401
    assert refused.body.get("code") == "device_revoked"
    await ws.close()
