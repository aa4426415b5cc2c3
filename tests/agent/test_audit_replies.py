"""The agent takes the relay's answer to the audit batch it sent, not a late answer
to an earlier send of it (``coact.agent.runtime.await_audit_reply``)."""

from __future__ import annotations

import asyncio

import pytest

from coact.agent.frames import AuditAck, AuditNack
from coact.agent.runtime import await_audit_reply
from coact.shared.chain import ChainHead

HEAD = ChainHead(7, "a" * 64)


def queue_of(*replies: AuditAck | AuditNack) -> asyncio.Queue[AuditAck | AuditNack]:
    queue: asyncio.Queue[AuditAck | AuditNack] = asyncio.Queue()
    for reply in replies:
        queue.put_nowait(reply)
    return queue


async def test_a_late_ack_of_fewer_records_is_not_taken_for_this_batchs() -> None:
    late, this = AuditAck(last_seq=4, head_hash="b" * 64), AuditAck(last_seq=7, head_hash="a" * 64)
    assert await await_audit_reply(queue_of(late, this), HEAD, 5) == this


async def test_busy_means_the_answer_is_still_to_come() -> None:
    ack = AuditAck(last_seq=7, head_hash="a" * 64)
    assert await await_audit_reply(queue_of(AuditNack(code="busy", detail="wait"), ack), HEAD, 5) == ack


async def test_a_refusal_is_this_batchs_answer() -> None:
    fork = AuditNack(code="fork", detail="seq 3", expected_seq=3)
    assert await await_audit_reply(queue_of(AuditAck(last_seq=2, head_hash="c" * 64), fork), HEAD, 5) == fork


async def test_only_late_answers_time_out() -> None:
    replies = queue_of(AuditAck(last_seq=6, head_hash="d" * 64), AuditNack(code="busy", detail="wait"))
    with pytest.raises(TimeoutError):
        await await_audit_reply(replies, HEAD, 0.05)
    assert replies.empty()  # both were read and set aside
