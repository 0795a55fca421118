"""The stream contract of /generate: events, ids, data, headers, and exact round trips."""

from __future__ import annotations

import json

import httpx
import pytest
from redis.asyncio import Redis

from tests.api.support import (
    DONE_FIELDS,
    Stack,
    Stream,
    fields,
    frames,
    read_raw,
    read_sse,
    task_ids,
    with_context,
    words,
)
from tests.helpers import eventually

HOSTILE = (
    "line one\nline two\r\nline three\rafter a lone CR \"double\" 'single' back\\slash "
    "data: x\n\nevent: done\n\nid: forged:9\nretry: 1\n: not a comment\n"
    "\t tab  two  spaces  emoji 🚀🧪👩\u200d👩\u200d👧 RTL עברית مرحبا \u202ereversed\u202c "
    "NUL\x00here \x1b[31mescape \u2028line-sep \u2029para-sep \x85nel </script> "
    "averyveryverylongwordthatgetscutintopieces end\n\n"
)


def assert_complete(stream: Stream, context: str) -> None:
    """task, tokens with consecutive ids, then one `done` that agrees with the tokens."""
    assert stream.status == 200, stream.body
    assert stream.ended_by_server
    task, *tokens, done = stream.events
    assert task.event == "task"
    task_id = task.data["task_id"]
    assert task.data == {"task_id": task_id}
    assert task.id == f"{task_id}:-1"
    assert [t.event for t in tokens] == ["token"] * len(tokens)
    assert [t.id for t in tokens] == [f"{task_id}:{i}" for i in range(len(tokens))]
    assert all(set(t.data) == {"text"} for t in tokens)
    assert done.event == "done", done.data
    assert set(done.data) >= DONE_FIELDS
    assert done.data["task_id"] == task_id
    assert done.data["tokens"] == len(tokens)
    assert stream.text == done.data["text"] == context
    timings = [done.data[k] for k in ("queue_ms", "ttft_ms", "total_ms")]
    assert all(isinstance(t, int) and t >= 0 for t in timings), timings
    assert done.data["queue_ms"] <= done.data["ttft_ms"] <= done.data["total_ms"]
    assert done.data["batch_size"] >= 1


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
    all_frames = frames(raw)
    comments = [f for f in all_frames if all(line.startswith(":") for line in f)]
    events = [fields(f) for f in all_frames if f not in comments]
    assert len(comments) >= 2, raw  # pings are comments, nothing a client would dispatch
    assert [e.get("event") for e in events] == ["task", "token", "token", "token", "done"]
    task_id = json.loads(events[0]["data"])["task_id"]
    assert events[0]["id"] == f"{task_id}:-1"
    assert events[0]["retry"] == "1500"
    assert [e["id"] for e in events[1:4]] == [f"{task_id}:{i}" for i in range(3)]
    assert all(set(e) <= {"event", "data", "id", "retry"} for e in events)
    assert json.loads(events[-1]["data"])["text"] == "w0 w1 w2"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_hostile_context_round_trips_exactly(
    stack: Stack, client: httpx.AsyncClient, method: str
) -> None:
    api = await stack.api()
    await stack.worker()
    stream = await read_sse(client, method, f"{api.url}/generate", **with_context(method, HOSTILE))
    assert_complete(stream, HOSTILE)
    assert stream.kinds.count("done") == 1


async def test_health_readiness_and_openapi(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api()
    assert (await client.get(f"{api.url}/healthz")).status_code == 200
    not_ready = await client.get(f"{api.url}/readyz")
    assert not_ready.status_code == 503  # Redis is up, but no worker yet
    assert not_ready.json()["workers"] == 0
    await stack.worker()

    async def ready() -> bool:
        answer = await client.get(f"{api.url}/readyz")
        return answer.status_code == 200 and answer.json()["ready"] is True

    await eventually(ready, 10, "/readyz to answer 200 once a worker beats")
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
