"""The stream contract of /generate: events, ids, data, headers, and exact round trips."""

from __future__ import annotations

import re

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.contract import SseParser
from tests.support.contexts import ONE_CONTEXT
from tests.support.processes import Stack
from tests.support.results import task_ids
from tests.support.sse import Stream, read_raw, read_sse, with_context, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


def assert_complete(stream: Stream, context: str) -> None:
    """The contract's check with ``context`` as the answer (task, tokens with consecutive ids,
    one `done` that agrees with them), and the exact data and timings of each event."""
    assert stream.ended_by_server
    done = stream.assert_exact(context)
    assert stream.events[0].data == {"task_id": stream.task_id}
    assert all(set(t.data) == {"text"} for t in stream.tokens)
    timings = [done[k] for k in ("queue_ms", "ttft_ms", "total_ms")]
    assert all(isinstance(t, int) and t >= 0 for t in timings), timings
    assert done["queue_ms"] <= done["ttft_ms"] <= done["total_ms"]
    assert done["batch_size"] >= 1


def assert_sse_headers(headers: httpx.Headers) -> None:
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    assert "no-cache" in headers["cache-control"]


async def test_get_streams_task_tokens_then_done(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    await stack.worker()
    context = words(12)
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
    assert_complete(stream, context)
    assert_sse_headers(stream.headers)
    assert stream.events[0].retry == 1000  # LLMB_RETRY_MS default
    assert await task_ids(redis, stack.prefix) == {stream.events[0].data["task_id"]}


async def test_post_json_gives_the_same_stream(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api()
    await stack.worker()
    context = words(7, "post")
    stream = await read_sse(client, "POST", f"{api.url}/generate", json={"context": context})
    assert_complete(stream, context)
    assert_sse_headers(stream.headers)


async def test_raw_frames_have_ids_retry_and_ping_comments_only(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api(ping_s=0.2, retry_ms=1500)
    await stack.worker()
    # the first token comes after 1 s, so the idle stream is pinged a few times before it
    context = "@mock ttft_ms=1000 itl_ms=0\n" + words(3)
    response, raw = await read_raw(
        client, "GET", f"{api.url}/generate", params={"context": context}
    )
    assert response.status_code == 200
    parser = SseParser()
    events = parser.feed(raw) + parser.close()
    assert parser.comments >= 2, raw  # pings are comments, nothing a client would dispatch
    assert [e.kind for e in events] == ["task", "token", "token", "token", "done"]
    task_id = events[0].data["task_id"]
    assert events[0].id == f"{task_id}:-1"
    assert events[0].retry == 1500
    assert [e.id for e in events[1:4]] == [f"{task_id}:{i}" for i in range(3)]
    lines = [line for line in re.split(r"\r\n|\r|\n", raw) if line]
    assert all(re.match(r"(event|data|id|retry): |:", line) for line in lines), raw
    assert events[-1].data["text"] == "w0 w1 w2"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_hostile_context_round_trips_exactly(
    stack: Stack, client: httpx.AsyncClient, method: str
) -> None:
    api = await stack.api()
    await stack.worker()
    stream = await read_sse(
        client, method, f"{api.url}/generate", **with_context(method, ONE_CONTEXT)
    )
    assert_complete(stream, ONE_CONTEXT)
    assert stream.kinds.count("done") == 1


async def test_health_readiness_and_openapi(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api()
    assert (await client.get(f"{api.url}/healthz")).status_code == 200
    no_worker = await client.get(f"{api.url}/readyz")
    assert no_worker.status_code == 200  # Redis is up: requests are queued for a worker to come
    assert no_worker.json() == {
        "ready": True,
        "draining": False,
        "redis": True,
        "workers": 0,
        "no_live_worker": True,
    }
    await stack.worker()

    async def counted() -> bool:
        answer = (await client.get(f"{api.url}/readyz")).json()
        return answer["workers"] == 1 and answer["no_live_worker"] is False

    await eventually(counted, 10, "/readyz to count the worker once it beats")
    spec = (await client.get(f"{api.url}/openapi.json")).json()
    assert {"get", "post"} <= set(spec["paths"]["/generate"])
    docs = await client.get(f"{api.url}/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_a_failed_task_ends_with_one_error_event(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api()
    await stack.worker()
    context = "@mock ttft_ms=0 itl_ms=0 fail=exit fail_after=2\n" + words(6)
    stream = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
    assert stream.ended_by_server
    assert stream.kinds == ["task", "token", "token", "error"]
    assert set(stream.terminal.data) == {"code", "message"}
    assert stream.terminal.data["code"] == "llm_crashed"
    assert stream.terminal.data["message"]
    assert stream.text == "w0 w1 "  # what was sent stays a true prefix of the answer
