"""A Redis that refuses writes (maxmemory reached under noeviction), under a live API and worker:
new requests get 503 `redis_full` on every endpoint that queues, the stream of a task that was
running ends with an `error` event, the worker neither crashes nor spins, and everything works
again once Redis has room."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.full import TinyRedis, empty, fill
from tests.support.processes import Stack
from tests.support.sse import Stream, read_sse, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

FULL_WAIT_S = 1.0  # LLMB_REDIS_FULL_WAIT_S of the worker
MODEL = "llm-batcher-mock"


def refused_requests(url: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every way to queue a task, each with a context."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "no room"}]}
    return {
        "GET": ("GET", f"{url}/generate", {"params": {"context": "no room"}}),
        "POST": ("POST", f"{url}/generate", {"json": {"context": "no room"}}),
        "chat": ("POST", f"{url}/v1/chat/completions", {"json": {**chat, "stream": True}}),
        "completions": ("POST", f"{url}/v1/completions", {"json": {"model": MODEL, "prompt": "x"}}),
    }


async def test_a_full_redis_refuses_requests_and_ends_running_streams(
    tiny_redis: TinyRedis, key_prefix: str, tmp_path: Any, client: httpx.AsyncClient
) -> None:
    stack = Stack(tiny_redis.url, key_prefix, tmp_path)
    redis = Redis.from_url(tiny_redis.url)
    try:
        await run_scenario(stack, redis, client)
    finally:
        stack.stop()
        print(stack.logs())
        await redis.aclose()


async def run_scenario(stack: Stack, redis: Redis, client: httpx.AsyncClient) -> None:
    api = await stack.api()
    worker = await stack.worker(redis_full_wait_s=FULL_WAIT_S)
    await stack.wait_ready(api)
    context = "@mock ttft_ms=0 itl_ms=100\n" + words(60)  # six seconds of tokens
    running = Stream()
    reader = asyncio.create_task(
        read_sse(client, "GET", f"{api.url}/generate", into=running, params={"context": context})
    )
    await eventually(lambda: len(running.tokens) >= 3, 10, "the task to stream")
    await fill(redis)

    for what, (method, url, kwargs) in refused_requests(api.url).items():
        response = await client.request(method, url, **kwargs)
        assert response.status_code == 503, (what, response.text)
        body = response.json()
        code = body["error"]["code"] if what in ("chat", "completions") else body["code"]
        assert code == "redis_full", (what, body)
        assert int(response.headers["retry-after"]) > 0
    ready = await client.get(f"{api.url}/readyz")
    assert ready.status_code == 200  # Redis answers; it is full, not gone

    await asyncio.wait_for(reader, FULL_WAIT_S + 10)  # ends: no hang, not cut without a word
    error = running.assert_error()
    assert error["code"] == "redis_full", error
    assert "maxmemory" not in error["message"] and "script" not in error["message"]
    assert 3 <= len(running.tokens) < 60
    assert running.text == "".join(f"w{i} " for i in range(len(running.tokens)))  # a true prefix
    assert worker.proc.popen.poll() is None  # no crash
    await eventually(lambda: "failed: redis_full" in worker.proc.log(), 5, "the worker's line")
    log = worker.proc.log()
    retries = log.count("Redis is full")
    assert 0 < retries < 20, retries  # bounded, with backoff: no spin

    await empty(redis)
    answer = await read_sse(client, "GET", f"{api.url}/generate", params={"context": "room again"})
    answer.assert_exact("room again")
