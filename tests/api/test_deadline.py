"""The per-task deadline (LLMB_TASK_TIMEOUT_S): a task not finished in time ends with `timeout`."""

from __future__ import annotations

import time

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.mock.directives import MAX_MS
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
    # A first token in an hour: only the deadline can end this stream (no upper time bound,
    # which a loaded machine could break; the test's own timeout bounds the wait).
    context = f"@mock ttft_ms={MAX_MS}\nslow"
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
    elapsed_s = time.monotonic() - started
    assert stream.kinds == ["task", "error"]
    assert stream.terminal.data["code"] == "timeout"
    assert stream.terminal.data["message"]
    # Not before the deadline: a lower bound, which load cannot break (it only delays).
    assert elapsed_s >= 0.9, elapsed_s
    task_id = stream.events[0].data["task_id"]
    assert await task_state(redis, stack.prefix, task_id) == ("error", "timeout")


async def test_the_deadline_also_cuts_a_stream_already_under_way(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api(task_timeout_s=3)
    await stack.worker()
    # Twenty tokens, one every 500 ms: ten seconds, cut at 3 s. The margins are wide both ways:
    # the first token comes (ttft 0) unless the batch starts 3 s late, and the last would come
    # only 7 s after the deadline. The error in place of `done`, after fewer than 20 tokens, is
    # what shows the cut; no elapsed time is asserted.
    context = "@mock ttft_ms=0 itl_ms=500\n" + words(20)
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
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
