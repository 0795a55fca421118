"""Subscribing before the task is queued (ResultHub.open_ahead, Tasks.submit(subscribed=True)).

A stream whose subscription Redis held when it queued the task gets every entry by pub/sub and
never reads the result stream; one whose subscription Redis took later reads what it missed;
one whose subscription could not be sent falls back to subscribing after the submit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from llm_batcher import contract
from llm_batcher.api.hub import ResultHub
from llm_batcher.api.stream import StreamState, TaskStream
from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.settings import ApiSettings
from tests.support.results import make_queue, start_next
from tests.support.waiting import eventually

DEADLINE_MS = 60_000


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix)
    await q.claims.ensure_group()
    return q


@pytest.fixture
async def hub(redis: Redis, key_prefix: str) -> AsyncIterator[ResultHub]:
    result_hub = ResultHub(redis, Keys(key_prefix))
    await result_hub.start()
    try:
        yield result_hub
    finally:
        await result_hub.stop()


async def subscribers(redis: Redis, channel: str) -> int:
    ((_, count),) = await redis.pubsub_numsub(channel)
    return int(count)


async def submit(queue: TaskQueue, task_id: str, max_queue: int = 100) -> tuple[bool, bool]:
    """Whether the task was queued, and whether Redis held the subscription first."""
    now = now_ms()
    queued = await queue.tasks.submit(
        task_id, f"context of {task_id}", now_ms=now, deadline_ms=now + DEADLINE_MS,
        max_queue=max_queue, subscribed=True,
    )  # fmt: skip
    return queued is not None, queued is not None and queued.subscribed_first


class CountedReads:
    """The queue's reads of result streams, counted (they still go to Redis)."""

    def __init__(self, queue: TaskQueue) -> None:
        self.calls = 0
        read = queue.results.after

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await read(*args, **kwargs)

        queue.results.after = counted  # type: ignore[method-assign]


async def read_stream(stream: TaskStream, write: Any) -> list[dict[str, Any]]:
    """Every event of ``stream``; ``write()`` runs once its `task` event has been read."""
    frames = b""
    events = stream.events()
    try:
        frames += await anext(events)
        await write()
        async for chunk in events:
            frames += chunk
    finally:
        await events.aclose()
    return [{"event": str(e.kind), "id": e.id, **e.data} for e in contract.parse(frames.decode())]


async def test_submit_says_whether_redis_held_the_subscription_first(
    redis: Redis, queue: TaskQueue, hub: ResultHub
) -> None:
    ahead = str(uuid.uuid4())
    sub = await hub.open_ahead(ahead, timeout_s=5)
    assert sub is not None
    await eventually(lambda: subscribers(redis, queue.keys.result(ahead)), what="subscription")
    assert await submit(queue, ahead) == (True, True)
    assert await submit(queue, str(uuid.uuid4())) == (True, False)  # nobody subscribed
    assert await submit(queue, str(uuid.uuid4()), max_queue=2) == (False, False)  # queue full
    hub.close(sub)
    await eventually(lambda: hub.open_streams == 0)


async def test_a_stream_subscribed_before_its_task_never_reads_the_result_stream(
    redis: Redis, queue: TaskQueue, hub: ResultHub
) -> None:
    task_id = str(uuid.uuid4())
    sub = await hub.open_ahead(task_id, timeout_s=5)
    await eventually(lambda: subscribers(redis, queue.keys.result(task_id)), what="subscription")
    assert await submit(queue, task_id) == (True, True)
    reads = CountedReads(queue)
    state = StreamState(
        task_id, 0, now_ms() + DEADLINE_MS, created_here=True, sub=sub, announced_from_start=True
    )

    async def work() -> None:
        task = await start_next(queue)
        await queue.tasks.append(task, 0, ["one "], now_ms())
        await queue.tasks.append_and_complete(
            task, 1, ["two"], now_ms(), {"text": "one two", "tokens": 2}
        )

    events = await read_stream(TaskStream(queue, hub, ApiSettings(), state), work)
    assert [e["event"] for e in events] == ["task", "token", "token", "done"]
    assert [e["id"] for e in events[1:3]] == [f"{task_id}:0", f"{task_id}:1"]
    assert events[-1]["text"] == "one two"
    assert reads.calls == 0
    assert hub.open_streams == 0  # the stream's end closed the subscription


async def test_a_stream_whose_subscription_came_late_reads_what_it_missed(
    queue: TaskQueue, hub: ResultHub
) -> None:
    # Redis queued the task before it took the subscription (its submit said so), and the
    # whole answer was announced in between, to no one: the stream reads it from the results.
    task_id = str(uuid.uuid4())
    assert await submit(queue, task_id) == (True, False)
    task = await start_next(queue)
    await queue.tasks.append(task, 0, ["before "], now_ms())
    await queue.tasks.append_and_complete(
        task, 1, ["subscribing"], now_ms(), {"text": "before subscribing", "tokens": 2}
    )
    sub = await hub.open_ahead(task_id, timeout_s=5)
    state = StreamState(task_id, 0, now_ms() + DEADLINE_MS, created_here=True, sub=sub)

    async def nothing_more() -> None:
        return None

    async with asyncio.timeout(10):  # with nothing read, the stream would wait for its deadline
        events = await read_stream(TaskStream(queue, hub, ApiSettings(), state), nothing_more)
    assert [e["event"] for e in events] == ["task", "token", "token", "done"]
    assert [e["id"] for e in events[1:3]] == [f"{task_id}:0", f"{task_id}:1"]
    assert events[-1]["text"] == "before subscribing"


async def test_a_subscription_that_cannot_be_sent_leaves_nothing_behind(
    redis_url: str, key_prefix: str
) -> None:
    # Nothing listens on port 1: open_ahead gives up, and the API subscribes after its submit
    # instead (where an unreachable Redis ends the stream with `redis_unavailable`).
    dead = Redis.from_url("redis://127.0.0.1:1/0")
    unreachable = ResultHub(dead, Keys(key_prefix))
    try:
        assert await unreachable.open_ahead(str(uuid.uuid4()), timeout_s=5) is None
        assert unreachable.open_streams == 0
    finally:
        await dead.aclose()
