"""The task protocol on a Redis that refuses writes (maxmemory reached under noeviction): new
tasks, starts and tokens are refused with OutOfMemoryError; ending a task still works, so that
no stream waits for its deadline; and a `done` never goes out without its tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from llm_batcher.clock import now_ms
from llm_batcher.protocol.outcomes import ErrorCode, WriteResult
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from tests.support.full import TinyRedis, empty, fill
from tests.support.results import answer, make_queue, submit, terminal


@pytest.fixture
async def full_queue(tiny_redis: TinyRedis) -> AsyncIterator[TaskQueue]:
    client = Redis.from_url(tiny_redis.url)
    queue = make_queue(client, "llmbfull")
    await queue.claims.ensure_group()
    try:
        yield queue
    finally:
        await client.aclose()


async def start(queue: TaskQueue) -> StartedTask:
    [claim] = await queue.claims.read_new("w1", 1, None)
    started = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=3)
    assert isinstance(started, StartedTask), started
    return started


async def test_a_full_redis_refuses_new_work_but_lets_tasks_end(full_queue: TaskQueue) -> None:
    queue = full_queue
    await submit(queue, "running")
    running = await start(queue)
    assert (await queue.tasks.append(running, 0, ["a ", "b "], now_ms())).tokens == 2
    queued = await submit(queue, "queued, never started")
    assert await fill(queue.redis) > 0

    with pytest.raises(OutOfMemoryError):
        await submit(queue, "no room for this one")
    with pytest.raises(OutOfMemoryError):
        await queue.tasks.append(running, 2, ["c "], now_ms())
    [claim] = await queue.claims.read_new("w1", 1, None)  # reading and claiming need no memory
    with pytest.raises(OutOfMemoryError):
        await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=3)
    assert await queue.redis.hget(queue.keys.task(queued), "attempt") == b"0"  # nothing counted

    # A `done` whose last tokens were refused is refused too; an error ends the task.
    summary = {"task_id": running.task_id, "text": "a b c ", "tokens": 3}
    assert await queue.tasks.complete(running, summary) is WriteResult.INCOMPLETE
    failed = await queue.tasks.fail(running, ErrorCode.REDIS_FULL, "Redis is full")
    assert failed is WriteResult.OK
    entries = await queue.results.after(running.task_id, -1)
    assert answer(entries) == "a b "
    end = terminal(entries)
    assert end.kind == "error" and end.data is not None and end.data["code"] == "redis_full"
    assert await queue.tasks.cancel(queued)  # the API's cancel and deadline (ABORT) too

    await empty(queue.redis)
    assert await submit(queue, "room again")
