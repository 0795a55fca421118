"""What a task leaves in Redis once it ended: never its context (but a dead letter's, kept so that
it can be requeued: tests/protocol/test_dead_letters.py), and a task that ended before its first
token (cancelled or expired) only for a short while."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import UNANSWERED_TTL_MS
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry
from llm_batcher.protocol.tasks import StartedTask
from tests.support.results import make_queue, submit

RESULT_TTL_S = 3600
CONTEXT = "a secret context, " * 1000  # 18 kB


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix, ttl_s=RESULT_TTL_S)
    await q.claims.ensure_group()
    return q


async def started(queue: TaskQueue) -> StartedTask:
    (claim,) = await queue.claims.read_new("c1", 10, None)
    task = await queue.tasks.start(claim, worker="c1", now_ms=now_ms(), max_attempts=3)
    assert isinstance(task, StartedTask)
    return task


async def kept(queue: TaskQueue, task_id: str) -> tuple[set[str], int, int]:
    """The task hash's fields, and the TTLs (ms) of its hash and result stream."""
    fields = {f.decode() for f in await queue.redis.hkeys(queue.keys.task(task_id))}
    ttl = await queue.redis.pttl(queue.keys.task(task_id))
    return fields, ttl, await queue.redis.pttl(queue.keys.result(task_id))


async def test_a_finished_task_keeps_its_answer_but_not_its_context(queue: TaskQueue) -> None:
    task_id = await submit(queue, CONTEXT)
    assert await queue.redis.hexists(queue.keys.task(task_id), "context")
    task = await started(queue)
    await queue.tasks.append(task, 0, ["an answer"], now_ms())
    await queue.tasks.complete(task, {"text": "an answer"})
    fields, ttl, result_ttl = await kept(queue, task_id)
    assert "context" not in fields and {"state", "preview", "tokens"} <= fields
    assert ttl > UNANSWERED_TTL_MS and result_ttl > UNANSWERED_TTL_MS  # resumable for an hour
    entries = await queue.results.after(task_id, -1)
    assert [e.kind for e in entries] == ["token", "done"]


async def test_a_task_cut_after_tokens_keeps_its_partial_answer(queue: TaskQueue) -> None:
    task_id = await submit(queue, CONTEXT)
    task = await started(queue)
    await queue.tasks.append(task, 0, ["half "], now_ms())
    assert await queue.tasks.expire(task_id, "too late")
    fields, ttl, _ = await kept(queue, task_id)
    assert "context" not in fields and ttl > UNANSWERED_TTL_MS


async def test_a_cancelled_task_is_gone_soon(queue: TaskQueue) -> None:
    """The attack: submit 128 kB contexts and hang up at once; each used to keep its whole
    context in Redis for the result TTL (an hour)."""
    task_id = await submit(queue, CONTEXT)
    assert await queue.tasks.cancel(task_id)
    fields, ttl, result_ttl = await kept(queue, task_id)
    assert "context" not in fields
    assert 0 < ttl <= UNANSWERED_TTL_MS and 0 < result_ttl <= UNANSWERED_TTL_MS
    (entry,) = await queue.results.after(task_id, -1)
    assert entry.data is not None and entry.data["code"] == "cancelled"  # still readable


async def test_a_task_that_expired_before_its_first_token_is_gone_soon(queue: TaskQueue) -> None:
    task_id = await submit(queue, CONTEXT)
    await started(queue)
    assert await queue.tasks.expire(task_id, "too late")
    fields, ttl, _ = await kept(queue, task_id)
    assert "context" not in fields and 0 < ttl <= UNANSWERED_TTL_MS


async def test_a_dead_letter_keeps_its_context_for_the_result_ttl(queue: TaskQueue) -> None:
    task_id = await submit(queue, CONTEXT)
    task = await started(queue)
    await queue.tasks.fail(task, ErrorCode.LLM_CRASHED, "exit 2 before any output")
    fields, ttl, result_ttl = await kept(queue, task_id)
    assert "context" in fields and ttl > UNANSWERED_TTL_MS and result_ttl > UNANSWERED_TTL_MS
    assert 0 < await queue.redis.pttl(queue.keys.dead_letters) <= RESULT_TTL_S * 1000


async def test_results_are_read_in_pages(queue: TaskQueue) -> None:
    task_id = await submit(queue, "long")
    task = await started(queue)
    await queue.tasks.append(task, 0, [f"t{i} " for i in range(25)], now_ms())
    await queue.tasks.complete(task, {"text": "..."})
    pages: list[list[ResultEntry]] = []
    index = -1
    while not pages or not pages[-1][-1].is_terminal:
        pages.append(await queue.results.after(task_id, index, count=10))
        index = pages[-1][-1].index if not pages[-1][-1].is_terminal else index
    assert [len(p) for p in pages] == [10, 10, 6]
    assert [e.text for p in pages for e in p][:25] == [f"t{i} " for i in range(25)]
