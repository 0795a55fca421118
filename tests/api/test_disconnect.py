"""Clients that hang up: before their task started (it is cancelled and never reaches the LLM),
and in the middle of the answer (it costs nothing: the batch completes, the task ends `done`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import queue_length, task_state
from tests.support.sse import SLOW, after_task, after_tokens, read_sse, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


async def test_hanging_up_before_the_task_starts_cancels_it(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()  # no worker yet: the task stays queued
    url = f"{api.url}/generate"
    gone = await read_sse(client, "GET", url, params={"context": "never run"}, until=after_task)
    task_id = gone.events[0].data["task_id"]

    async def cancelled() -> bool:
        return await task_state(redis, stack.prefix, task_id) == ("error", "cancelled")

    await eventually(cancelled, 5, "the task to end with error `cancelled`")
    assert await queue_length(redis, stack.prefix) == 0  # out of the queue, not just marked

    worker = await stack.worker()
    later = await read_sse(client, "GET", url, params={"context": "runs after"})
    assert later.terminal.kind == "done"  # the worker has gone past where the task was
    later_id = later.events[0].data["task_id"]
    await eventually(lambda: later_id in worker.proc.log(), 5, "the worker's lines on it")
    assert task_id not in worker.proc.log()
    resumed = await read_sse(client, "GET", url, headers={"Last-Event-ID": f"{task_id}:-1"})
    assert resumed.kinds == ["task", "error"]
    assert resumed.terminal.data["code"] == "cancelled"


async def test_hanging_up_mid_stream_costs_nothing(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    url = f"{api.url}/generate"
    stay = [SLOW + words(8, f"stay{i}-") for i in range(2)]
    quit_context = SLOW + words(8, "quit-")
    # Queue all three before a worker exists, so that they run as one batch of three.
    readers = [
        asyncio.create_task(read_sse(client, "GET", url, params={"context": c})) for c in stay
    ]
    quitter = asyncio.create_task(
        read_sse(client, "GET", url, params={"context": quit_context}, until=after_tokens(2))
    )

    async def all_queued() -> bool:
        return await queue_length(redis, stack.prefix) == 3

    await eventually(all_queued, 5, "three queued tasks")
    await stack.worker(max_batch=3)

    gone = await quitter
    assert gone.kinds == ["task", "token", "token"]
    for reader, context in zip(readers, stay, strict=True):
        stream = await reader
        assert stream.terminal.kind == "done", stream.terminal.data
        assert stream.terminal.data["batch_size"] == 3
        assert stream.text == context.split("\n", 1)[1]
    task_id = gone.events[0].data["task_id"]

    async def done() -> bool:
        return await task_state(redis, stack.prefix, task_id) == ("done", None)

    await eventually(done, 10, "the abandoned task to end `done` in Redis")
    replay = await read_sse(client, "GET", url, headers={"Last-Event-ID": f"{task_id}:-1"})
    assert replay.terminal.kind == "done"
    assert replay.text == replay.terminal.data["text"] == words(8, "quit-")
