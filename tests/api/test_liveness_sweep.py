"""A task that vanishes from Redis while its stream is open (its hash expired, or Redis lost its
data) ends the stream with `lost`: the hub's liveness sweep notices it (api/hub.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.api.hub import LIVENESS_SWEEP_S
from llm_batcher.protocol.keys import Keys
from tests.support.processes import Stack
from tests.support.sse import Stream, read_sse
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


async def test_an_open_stream_whose_task_vanished_ends_with_lost(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()  # no worker: the task stays queued and its stream silent
    stream = Stream()
    params = {"context": "waiting for a worker that never comes"}
    reader = asyncio.create_task(
        read_sse(client, "GET", f"{api.url}/generate", into=stream, params=params)
    )
    await eventually(lambda: bool(stream.events), what="the task event")
    task_id = stream.events[0].data["task_id"]
    assert await redis.delete(Keys(stack.prefix).task(task_id)) == 1  # as if it had expired
    await asyncio.wait_for(reader, 3 * LIVENESS_SWEEP_S)
    assert stream.kinds == ["task", "error"]
    assert stream.terminal.data["code"] == "lost"
