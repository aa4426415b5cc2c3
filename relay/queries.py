"""Prebuilt statements for the relay's hot paths (every task, heartbeat, audit batch).

Building a SQLAlchemy Core statement per call (``update(t).where(...).values(...)``)
and finding its compiled form costs 60-100 µs in Python; executing a statement
built once, with bind parameters, costs 15-20 µs; a :class:`~coact.relay.prepared.Prepared`
one, a few µs (measured on SQLite, see docs/performance.md). A task makes about a
dozen statements on its way, so the difference is most of the relay's database time
per task. Reads that return JSON columns stay plain Core statements: their rows need
SQLAlchemy's result processing.

Bind parameters are named ``b_*`` so that they never collide with column names: an
``UPDATE`` made with ``set_from_params=True`` takes its SET columns from the other
keys of the parameters it is executed with.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, delete, insert, or_, select, update

from coact.relay import schema as s
from coact.relay.prepared import Prepared

_t = s.tasks
_d = s.devices

# What a state change needs to know of a task, without its JSON columns: a task's
# params (a file.write's content) or result can be megabytes, and marking it running
# or storing its result should not decode them.
_TASK_STATE = (_t.c.id, _t.c.org_id, _t.c.device_id, _t.c.status, _t.c.timeout_s, _t.c.started_at, _t.c.attempts,
               _t.c.result.is_not(None).label("has_result"))
TASK_STATE = Prepared(select(*_TASK_STATE).where(_t.c.id == bindparam("b_id")))
DEVICE_TASK_STATE = Prepared(
    select(*_TASK_STATE).where(_t.c.id == bindparam("b_id"), _t.c.device_id == bindparam("b_device"))
)
# A new task, inserted only if its device is an active device of the org: the check
# and the insert in one statement. It returns the new id, or no row (the caller then
# finds out why); a row count is not reliable for INSERT ... SELECT on every driver.
_NEW_TASK_COLUMNS = ("id", "org_id", "device_id", "action", "params", "status", "risk", "created_by",
                     "created_at", "updated_at", "timeout_s", "expires_at", "dispatched_at", "attempts")
INSERT_TASK_FOR_ACTIVE_DEVICE = Prepared(insert(_t).from_select(
    _NEW_TASK_COLUMNS,
    select(*(bindparam(name, type_=_t.c[name].type) for name in _NEW_TASK_COLUMNS)).where(
        _d.c.id == bindparam("device_id"), _d.c.org_id == bindparam("org_id"), _d.c.status == "active"
    ),
).returning(_t.c.id))


@cache
def move_task(from_statuses: tuple[str, ...]) -> Prepared:
    """Compare-and-set of a task's status from one of ``from_statuses``; SET columns
    come from the execution parameters. One statement per set of statuses (there are
    a handful), spelled with OR: SQLAlchemy renders an IN list anew on every execution."""
    return Prepared(
        update(_t).where(_t.c.id == bindparam("b_id"), or_(*(_t.c.status == status for status in from_statuses))),
        set_from_params=True,
    )


SET_TASK = Prepared(update(_t).where(_t.c.id == bindparam("b_id")), set_from_params=True)


def _deliverable(statuses: tuple[str, ...]) -> Select[Any]:
    return (select(_t)
            .where(_t.c.device_id == bindparam("b_device"), _t.c.status.in_(statuses),
                   _t.c.expires_at > bindparam("b_now"))
            .order_by(_t.c.id)
            .limit(bindparam("b_limit")))


# A device's tasks to send, oldest first: queued ones, and for a new session also
# those sent before but not yet reported. Whole rows (params are JSON), so Core.
QUEUED_TASKS = _deliverable(("queued",))
UNREPORTED_TASKS = _deliverable(("queued", "dispatched"))

DEVICE = select(_d).where(_d.c.id == bindparam("b_id"))
ORG_DEVICE = select(_d).where(_d.c.id == bindparam("b_id"), _d.c.org_id == bindparam("b_org"))
SET_DEVICE = Prepared(update(_d).where(_d.c.id == bindparam("b_id")), set_from_params=True)

# A token request's nonce: spent once (the primary key refuses a replay), kept until
# it expires, and the expired ones cleared on the way.
DELETE_EXPIRED_NONCES = Prepared(delete(s.device_nonces).where(s.device_nonces.c.expires_at < bindparam("b_now")))
INSERT_NONCE = Prepared(insert(s.device_nonces))

ORG_USER = select(s.users).where(s.users.c.id == bindparam("b_id"), s.users.c.org_id == bindparam("b_org"))

INSERT_RELAY_EVENT = Prepared(insert(s.relay_audit_outbox))
RELAY_HEAD = Prepared(select(s.relay_chains.c.seq, s.relay_chains.c.hash).where(
    s.relay_chains.c.chain_id == bindparam("b_chain")
))
SET_RELAY_HEAD = Prepared(update(s.relay_chains).where(s.relay_chains.c.chain_id == bindparam("b_chain")),
                          set_from_params=True)

_h = s.audit_heads
AUDIT_HEAD = Prepared(select(_h.c.seq, _h.c.hash).where(_h.c.chain_id == bindparam("b_chain")))
INSERT_AUDIT_HEAD = Prepared(insert(_h))
MOVE_AUDIT_HEAD = Prepared(update(_h).where(
    _h.c.chain_id == bindparam("b_chain"), _h.c.seq == bindparam("b_seq"), _h.c.hash == bindparam("b_hash")
), set_from_params=True)
