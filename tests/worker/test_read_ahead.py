"""Reading ahead (worker/ahead.py): near the end of its batch a busy worker claims
the next one, but never while another worker is idle and could start those tasks now."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Monitor

from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, WORKER_GROUP, Keys
from llm_batcher.protocol.queue import TaskQueue
from tests.support.processes import running_worker
from tests.support.results import (
    assert_complete_answer,
    make_queue,
    submit,
    wait_result,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

SHORT = "@mock ttft_ms=0 itl_ms=0\nshort one"
LONG_BODY = " ".join(f"w{i}" for i in range(40))
LONG = f"@mock ttft_ms=0 itl_ms=100\n{LONG_BODY}"  # about 4 s
# Batches of two that wait long for their second task, so that SHORT and LONG run together.
SETTINGS: dict[str, object] = {"max_batch": 2, "window_ms": 3000}


async def holder(queue: TaskQueue, task_id: str) -> str | None:
    """The worker whose pending list holds the task, if any."""
    for entry_id, fields in await queue.redis.xrange(queue.keys.tasks):
        if fields[b"task_id"].decode() == task_id:
            pending = await queue.redis.xpending_range(
                queue.keys.tasks, WORKER_GROUP, min=entry_id, max=entry_id, count=1
            )
            return pending[0]["consumer"].decode() if pending else None
    return None


async def finished(queue: TaskQueue, task_id: str) -> bool:
    key = queue.keys.result(task_id)
    return bool(await queue.redis.xrange(key, TERMINAL_ENTRY_ID, TERMINAL_ENTRY_ID))


async def start_short_and_long(queue: TaskQueue) -> str:
    """A batch of SHORT and LONG; returns LONG's id once SHORT is done (the batch's tail)."""
    short = await submit(queue, SHORT)
    long = await submit(queue, LONG)
    assert_complete_answer(await wait_result(queue, short), "short one")
    assert not await finished(queue, long)
    return long


async def test_a_busy_worker_claims_its_next_batch_before_the_current_one_ends(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    async with running_worker(redis_url, key_prefix, tmp_path, worker_id="only", **SETTINGS):
        long = await start_short_and_long(queue)
        after = await submit(queue, "@mock ttft_ms=0 itl_ms=0\nread ahead")
        await eventually(lambda: holder(queue, after), 10, "the next task to be claimed")
        assert await holder(queue, after) == "only"
        assert not await finished(queue, long)  # claimed while the batch still ran
        done = assert_complete_answer(await wait_result(queue, after), "read ahead")
        assert_complete_answer(await wait_result(queue, long), LONG_BODY)
    assert done.data is not None
    assert done.data["worker"] == "only"
    assert done.data["batch_id"] != ""


async def test_an_idle_worker_is_not_starved_by_a_busy_one_reading_ahead(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    idle_key = Keys(key_prefix).idle
    first = running_worker(redis_url, key_prefix, tmp_path, worker_id="w-a", **SETTINGS)
    second = running_worker(redis_url, key_prefix, tmp_path, worker_id="w-b", **SETTINGS)
    async with first, second:
        await eventually(lambda: redis.zcard(idle_key), 10, "a worker to wait for tasks")
        long = await start_short_and_long(queue)
        busy = await holder(queue, long)
        assert busy in ("w-a", "w-b")
        idle = "w-b" if busy == "w-a" else "w-a"
        # the idle worker has marked itself idle, and renewed the mark since
        seen = await redis.zscore(idle_key, idle)
        assert seen is not None
        await eventually(
            lambda: _score_above(redis, idle_key, idle, seen), 10, "the idle mark to be renewed"
        )
        assert await redis.zscore(idle_key, busy) is None  # busy workers are not idle
        after = await submit(queue, "@mock ttft_ms=0 itl_ms=0\nfor the idle one")
        done = assert_complete_answer(await wait_result(queue, after), "for the idle one")
        assert not await finished(queue, long)  # it did not wait for the busy worker's batch
        assert_complete_answer(await wait_result(queue, long), LONG_BODY)
    assert done.data is not None
    assert done.data["worker"] == idle


async def _score_above(redis: Redis, key: str, member: str, score: float) -> bool:
    now = await redis.zscore(key, member)
    return now is not None and now > score


async def test_the_ahead_turn_is_refused_while_another_worker_is_idle(
    redis: Redis, key_prefix: str
) -> None:
    """AHEAD_TURN, the rule itself: the check for idle workers and the turn are one step."""
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    claims, keys = queue.claims, queue.keys
    now = 1_000_000
    await claims.note_idle("idle-one", now)
    assert not await claims.take_turn_ahead("busy", 5000, idle_since_ms=now - 10)
    assert await redis.get(keys.reader) is None  # refused without taking the turn
    # an idle mark older than the cut-off (a worker that died idle) does not count
    assert await claims.take_turn_ahead("busy", 5000, idle_since_ms=now + 1)
    assert await redis.get(keys.reader) == b"busy"
    await claims.end_read_turn("busy")
    # nor does the worker's own mark, nor one that has started a batch
    await claims.note_idle("busy", now)
    await claims.note_busy("idle-one")
    assert await claims.take_turn_ahead("busy", 5000, idle_since_ms=now - 10)
    await claims.end_read_turn("busy")
    # the turn itself is still one reader at a time
    assert await claims.take_read_turn("reader", 5000, silence_ms=1500)
    assert not await claims.take_turn_ahead("busy", 5000, idle_since_ms=now - 10)
    await claims.end_read_turn("reader")
    # a clean exit leaves no idle mark behind
    await claims.note_idle("leaving", now)
    await claims.leave("leaving")
    assert await redis.zscore(keys.idle, "leaving") is None


async def test_a_worker_is_idle_before_its_batch_s_answers_are(
    own_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path
) -> None:
    """A worker whose batch ends marks itself idle before the batch's last writes, not after:
    the next requests of the batch's clients, sent as their answers end, are left to it rather
    than read ahead by a busy worker, which then started one of them alone (docs/benchmarks.md,
    "A batch of one at c8"). Redis's MONITOR gives the order in which Redis took the commands."""
    redis = Redis.from_url(own_redis.url)
    watcher = Redis.from_url(own_redis.url)  # MONITOR holds a connection of its own
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    idle_key = queue.keys.idle
    commands: list[str] = []

    async def record(monitor: Monitor) -> None:
        async for command in monitor.listen():
            commands.append(command["command"])

    def first(after: int, match: Callable[[str], bool]) -> int | None:
        return next((i for i in range(after, len(commands)) if match(commands[i])), None)

    def marked(verb: str) -> Callable[[str], bool]:
        return lambda c: c.startswith(f"{verb} {idle_key} ") and c.endswith(" w")

    try:
        async with running_worker(own_redis.url, key_prefix, tmp_path, worker_id="w"):
            await eventually(lambda: redis.zscore(idle_key, "w"), 10, "the worker to be idle")
            async with watcher.monitor() as monitor:
                recording = asyncio.create_task(record(monitor))
                await eventually(lambda: bool(commands), 10, "MONITOR to record")
                task_id = await submit(queue, "@mock ttft_ms=0 itl_ms=0\nits answer")
                assert_complete_answer(await wait_result(queue, task_id), "its answer")

                def order() -> tuple[int, int, int] | None:
                    busy = first(0, marked("ZREM"))  # as its batch started
                    if busy is None:
                        return None
                    done = first(busy, lambda c: task_id in c and "finish_reason" in c)
                    idle = first(busy, marked("ZADD"))
                    return None if done is None or idle is None else (busy, idle, done)

                await eventually(order, 10, "the worker's marks and the done to be recorded")
                recording.cancel()
    finally:
        await watcher.aclose()
        await redis.aclose()
    busy, idle, done = order() or (0, 0, 0)
    assert busy < idle < done, commands[busy : max(idle, done) + 1]
