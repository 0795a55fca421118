"""Requests the API refuses with a JSON error (413, 422, 503) queue nothing."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import assert_nothing_queued, queue_length, task_ids
from tests.support.sse import Stream, after_task, read_sse, with_context
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

LIMIT = 100  # LLMB_MAX_CONTEXT_BYTES of these tests


def assert_refused(stream: Stream, status: int, code: str) -> None:
    assert stream.status == status, stream.kinds
    assert stream.headers["content-type"].startswith("application/json")
    assert stream.body is not None
    assert stream.body["code"] == code
    assert isinstance(stream.body["detail"], str)
    assert stream.body["detail"]


BAD_BODIES = {
    "empty body": b"",
    "form-encoded": b"context=hello",
    "bad JSON": b'{"context": "unterminated',
    "array": b"[]",
    "bare string": b'"hello"',
    "no context": b"{}",
    "empty context": b'{"context": ""}',
    "number": b'{"context": 5}',
    "list": b'{"context": ["a"]}',
    "null": b'{"context": null}',
    "extra field": b'{"context": "a", "stream": true}',
    "wrong case": b'{"Context": "a"}',
    "lone surrogate": b'{"context": "\\ud800"}',
    "invalid UTF-8": b'{"context": "caf\xc3"}',
}


async def test_a_missing_or_empty_context_is_422(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    url = f"{api.url}/generate"
    assert_refused(await read_sse(client, "GET", url), 422, "missing_context")
    assert_refused(
        await read_sse(client, "GET", url, params={"context": ""}), 422, "missing_context"
    )
    await assert_nothing_queued(redis, stack.prefix)


async def test_a_post_body_other_than_the_documented_json_is_422(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    for what, body in BAD_BODIES.items():
        refused = await read_sse(
            client,
            "POST",
            f"{api.url}/generate",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert refused.status == 422, what
        assert refused.body is not None
        assert refused.body["code"] == "invalid_body", what
        assert refused.body["detail"], what
    await assert_nothing_queued(redis, stack.prefix)


async def test_a_context_over_the_byte_limit_is_413(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api(max_context_bytes=LIMIT)
    url = f"{api.url}/generate"
    over = "🚀" * 26  # 26 characters, 104 UTF-8 bytes: the limit counts bytes
    huge = b'{"context": "' + b"x" * 2_000_000 + b'"}'  # refused before it is all read
    json_body = {"content": huge, "headers": {"Content-Type": "application/json"}}
    for method, request in (
        ("GET", with_context("GET", over)),
        ("POST", with_context("POST", over)),
        ("POST", json_body),
    ):
        refused = await read_sse(client, method, url, **request)
        assert_refused(refused, 413, "context_too_large")
    await assert_nothing_queued(redis, stack.prefix)

    await stack.worker()
    at_limit = "é" * (LIMIT // 2)  # exactly LIMIT bytes
    for method in ("GET", "POST"):
        accepted = await read_sse(client, method, url, **with_context(method, at_limit))
        assert accepted.terminal.kind == "done"
        assert accepted.text == at_limit


async def test_a_full_queue_is_503_with_retry_after(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api(max_queue=2)  # and no worker: whatever is queued stays queued
    url = f"{api.url}/generate"
    async with (
        client.stream("GET", url, params={"context": "one"}) as one,
        client.stream("GET", url, params={"context": "two"}) as two,
    ):
        assert (one.status_code, two.status_code) == (200, 200)
        assert await queue_length(redis, stack.prefix) == 2
        for method in ("GET", "POST"):
            refused = await read_sse(client, method, url, **with_context(method, "three"))
            assert_refused(refused, 503, "queue_full")
            assert int(refused.headers["retry-after"]) > 0
            assert await queue_length(redis, stack.prefix) == 2
            assert len(await task_ids(redis, stack.prefix)) == 2

    async def emptied() -> bool:
        return await queue_length(redis, stack.prefix) == 0

    # both hung up before their tasks started: cancelled, the queue takes new tasks again
    await eventually(emptied, 5, "the hung-up tasks to leave the queue")
    accepted = await read_sse(client, "GET", url, params={"context": "four"}, until=after_task)
    assert accepted.status == 200
