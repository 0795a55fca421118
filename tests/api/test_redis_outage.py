"""Redis stopped and started again under a live API: fast 503s while it is down, no hanging
stream, and recovery without a restart of the API or the worker."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from llm_batcher.contract import Event
from llm_batcher.local.embedded_redis import EmbeddedRedis
from tests.support.processes import Api, Stack
from tests.support.sse import Stream, read_sse, sse_events, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

FAST_503_S = 3.0
"""The bound says a request is answered soon instead of hanging on Redis: LLMB_REDIS_TIMEOUT_S
(1 s by default) plus 2 s of room for a loaded machine."""


async def assert_fast_503s(client: httpx.AsyncClient, api: Api, task_id: str) -> None:
    """While Redis is down: readiness and every /generate flavour fail fast with 503."""
    requests = {
        "readyz": ("GET", f"{api.url}/readyz", {}),
        "GET": ("GET", f"{api.url}/generate", {"params": {"context": "while down"}}),
        "POST": ("POST", f"{api.url}/generate", {"json": {"context": "while down"}}),
        "resume": ("GET", f"{api.url}/generate", {"headers": {"Last-Event-ID": f"{task_id}:0"}}),
    }
    for what, (method, url, kwargs) in requests.items():
        started = time.monotonic()
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        elapsed_s = time.monotonic() - started
        print(f"MEASURED redis_down_{what}_s={elapsed_s:.3f}")
        assert response.status_code == 503, (what, response.text)
        assert elapsed_s < FAST_503_S, (what, elapsed_s)
        if what != "readyz":
            assert response.json()["code"] == "redis_unavailable"
            assert int(response.headers["retry-after"]) > 0


async def test_redis_restart_under_a_live_api(
    own_redis: EmbeddedRedis, own_stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await own_stack.api()
    worker = await own_stack.worker()
    await own_stack.wait_ready(api, 15)
    context = "@mock ttft_ms=0 itl_ms=200\n" + words(15)  # three seconds of tokens
    url = f"{api.url}/generate"
    async with client.stream("GET", url, params={"context": context}) as response:
        events: list[Event] = []
        async for event in sse_events(response):
            events.append(event)
            if len(events) == 2:  # task, then a first token: the task is running
                own_redis.stop()
                await assert_fast_503s(client, api, events[0].data["task_id"])
                await eventually(
                    lambda: (
                        "pub/sub connection lost" in api.proc.log()
                        and "heartbeat failed" in worker.proc.log()
                    ),
                    5,
                    "the API and the worker to notice the outage",
                )
                own_redis.start()  # same port, empty: no persistence
            assert len(events) < 40, "the stream went on past the restart"
    # Not a hang: the stream ends, with an error since the restarted Redis lost the task.
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["task", "token"]
    assert sum(e.is_terminal for e in events) == 1
    assert events[-1].kind == "error", kinds
    assert events[-1].data["code"] in {"lost", "redis_unavailable"}

    await own_stack.wait_ready(api, 15)  # the worker's heartbeat reached the new server
    after = await read_sse(client, "GET", url, params={"context": "after the restart"})
    assert after.terminal.kind == "done"
    assert after.text == "after the restart"


async def test_a_frozen_redis_gives_fast_503s_and_the_stream_survives(
    own_redis: EmbeddedRedis, own_stack: Stack, client: httpx.AsyncClient
) -> None:
    """Redis accepts connections but answers nothing (SIGSTOP): the timeouts must bound every
    request; once it answers again, the open stream goes on with nothing lost."""
    api = await own_stack.api()
    await own_stack.worker()
    await own_stack.wait_ready(api, 15)
    answer = words(12)
    context = "@mock ttft_ms=0 itl_ms=150\n" + answer
    url = f"{api.url}/generate"
    assert own_redis.process is not None
    redis_process = psutil.Process(own_redis.process.pid)
    async with client.stream("GET", url, params={"context": context}) as response:
        events: list[Event] = []
        async for event in sse_events(response):
            events.append(event)
            if len(events) == 2:
                redis_process.suspend()
                try:
                    await assert_fast_503s(client, api, events[0].data["task_id"])
                finally:
                    redis_process.resume()
    stream = Stream(events)
    assert stream.terminal.kind == "done", stream.terminal.data
    assert stream.text == stream.terminal.data["text"] == answer
    task_id = events[0].data["task_id"]
    assert [e.id for e in stream.tokens] == [f"{task_id}:{i}" for i in range(12)]


async def test_after_a_redis_restart_no_request_is_refused_on_a_dead_connection(
    own_redis: EmbeddedRedis, own_stack: Stack, client: httpx.AsyncClient
) -> None:
    """Concurrent submits open several connections of the API's pool; a Redis restart closes
    them all. Once the API is ready again, each taken from the pool is made again, not sent a
    command that fails (each refused one request with 503 redis_unavailable: the chaos soak)."""
    api = await own_stack.api()
    await own_stack.worker(window_ms=0)
    await own_stack.wait_ready(api, 15)

    async def submit_all(label: str) -> list[Stream]:
        return list(await asyncio.gather(*(
            read_sse(client, "POST", f"{api.url}/generate", json={"context": f"{label} {i}"})
            for i in range(6)
        )))  # fmt: skip

    assert all(s.status == 200 for s in await submit_all("before"))
    own_redis.stop()
    own_redis.start()
    await own_stack.wait_ready(api, 15)
    after = await submit_all("after")
    assert [(s.status, s.body) for s in after] == [(200, None)] * 6
    for i, stream in enumerate(after):
        stream.assert_exact(f"after {i}")
