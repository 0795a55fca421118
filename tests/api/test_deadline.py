"""The per-task deadline (LLMB_TASK_TIMEOUT_S): a task not finished in time ends with `timeout`."""

from __future__ import annotations

import time

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import task_state
from tests.support.sse import read_sse, words

pytestmark = pytest.mark.system


async def test_a_task_slower_than_its_deadline_ends_with_timeout(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api(task_timeout_s=1)
    await stack.worker()
    started = time.monotonic()
    stream = await read_sse(
        client, "GET", f"{api.url}/generate", params={"context": "@mock ttft_ms=5000\nslow"}
    )
    elapsed_s = time.monotonic() - started
    assert stream.kinds == ["task", "error"]
    assert stream.terminal.data["code"] == "timeout"
    assert stream.terminal.data["message"]
    assert 0.9 <= elapsed_s < 3, elapsed_s  # the deadline, well before the 5 s first token
    task_id = stream.events[0].data["task_id"]
    assert await task_state(redis, stack.prefix, task_id) == ("error", "timeout")


async def test_the_deadline_also_cuts_a_stream_already_under_way(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api(task_timeout_s=1.5)
    await stack.worker()
    # twenty tokens, one every 200 ms: about four seconds
    context = "@mock ttft_ms=0 itl_ms=200\n" + words(20)
    started = time.monotonic()
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
    assert time.monotonic() - started < 3.5
    assert stream.terminal.kind == "error"
    assert stream.terminal.data["code"] == "timeout"
    assert 1 <= len(stream.tokens) < 20
    assert words(20).startswith(stream.text)  # what came before the error is a true prefix
    task_id = stream.events[0].data["task_id"]
    assert await task_state(redis, stack.prefix, task_id) == ("error", "timeout")


async def test_a_queued_task_times_out_without_any_worker(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api(task_timeout_s=1)
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": "alone"})
    assert stream.kinds == ["task", "error"]
    assert stream.terminal.data["code"] == "timeout"
