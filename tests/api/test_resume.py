"""Resuming a stream with Last-Event-ID: on the same or another API process, during or after the
task, never submitting a new task."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.contract import Event
from tests.support.processes import Api, Stack
from tests.support.results import assert_nothing_queued, queue_length, task_ids
from tests.support.sse import SLOW, Stream, after_tokens, read_sse, with_context, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

ANSWER = words(10)
CONTEXT = SLOW + ANSWER  # ten tokens, one every 150 ms
SOME_UUID = "0b6c1f9e-8d4b-4c1e-9f0a-3e2d1c0b9a87"


async def resume(client: httpx.AsyncClient, api: Api, last_event_id: str) -> Stream:
    """Reconnect as EventSource does: the same URL (context included) plus Last-Event-ID."""
    return await read_sse(
        client,
        "GET",
        f"{api.url}/generate",
        params={"context": CONTEXT},
        headers={"Last-Event-ID": last_event_id},
    )


def assert_continues(resumed: Stream, task_id: str, after: int, total: int) -> None:
    """The resumed stream: `task`, tokens after..total-1, and one `done`."""
    assert resumed.status == 200, resumed.body
    assert resumed.kinds == ["task"] + ["token"] * (total - after - 1) + ["done"]
    assert resumed.events[0].data == {"task_id": task_id}
    assert resumed.events[0].id == f"{task_id}:{after}"
    assert [e.id for e in resumed.tokens] == [f"{task_id}:{i}" for i in range(after + 1, total)]
    assert resumed.terminal.data["tokens"] == total


async def interrupted_then_resumed(
    client: httpx.AsyncClient, redis: Redis, prefix: str, first: Api, second: Api
) -> None:
    """Read task + 3 tokens from ``first``, hang up, resume on ``second``: none lost or doubled."""
    part = await read_sse(
        client, "GET", f"{first.url}/generate", params={"context": CONTEXT}, until=after_tokens(3)
    )
    assert part.kinds == ["task", "token", "token", "token"]
    task_id = part.events[0].data["task_id"]
    assert part.events[-1].id == f"{task_id}:2"
    assert await queue_length(redis, prefix) <= 1

    rest = await resume(client, second, part.events[-1].id)

    assert_continues(rest, task_id, after=2, total=10)
    assert part.text + rest.text == ANSWER == rest.terminal.data["text"]
    assert await task_ids(redis, prefix) == {task_id}  # the reconnect queued nothing new


async def test_resume_on_the_same_api(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    await stack.worker()
    await interrupted_then_resumed(client, redis, stack.prefix, api, api)


async def test_resume_on_a_second_api_process(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    first, second = await stack.api(), await stack.api()
    await stack.worker()
    await interrupted_then_resumed(client, redis, stack.prefix, first, second)


async def test_resume_after_the_task_finished(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    await stack.worker()
    context = words(8)
    full = await read_sse(client, "GET", f"{api.url}/generate", params={"context": context})
    task_id = full.terminal.data["task_id"]
    url = f"{api.url}/generate"

    by_query = await read_sse(client, "GET", url, params={"last_event_id": f"{task_id}:4"})
    assert [e.id for e in by_query.tokens] == [f"{task_id}:{i}" for i in range(5, 8)]
    assert full.text[: len(full.text) - len(by_query.text)] + by_query.text == context
    assert by_query.terminal.data == full.terminal.data

    from_start = await read_sse(client, "GET", url, headers={"Last-Event-ID": f"{task_id}:-1"})
    assert from_start.kinds == full.kinds
    assert from_start.text == context

    after_last = await read_sse(client, "POST", url, headers={"Last-Event-ID": f"{task_id}:7"})
    assert after_last.kinds == ["task", "done"]
    assert after_last.terminal.data["text"] == context

    assert await task_ids(redis, stack.prefix) == {task_id}


MALFORMED_IDS = [
    "nonsense",
    "not-a-uuid:3",
    SOME_UUID,
    f"{SOME_UUID}:",
    f"{SOME_UUID}:three",
    f"{SOME_UUID}:-2",
    f"{SOME_UUID}:1.5",
    f"{SOME_UUID}:99999999999999999999999",
]


async def test_a_malformed_last_event_id_is_refused(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    url = f"{api.url}/generate"
    for last_event_id in MALFORMED_IDS:
        by_header = await read_sse(
            client, "GET", url, params={"context": "x"}, headers={"Last-Event-ID": last_event_id}
        )
        by_query = await read_sse(client, "GET", url, params={"last_event_id": last_event_id})
        for refused in (by_header, by_query):
            assert refused.status == 422, (last_event_id, refused.kinds)
            assert refused.body is not None
            assert refused.body["code"] == "invalid_last_event_id", last_event_id
            assert refused.body["detail"]
    await assert_nothing_queued(redis, stack.prefix)


async def test_an_unknown_task_is_404(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    unknown = f"{uuid.uuid4()}:3"
    for method in ("GET", "POST"):
        refused = await read_sse(
            client,
            method,
            f"{api.url}/generate",
            headers={"Last-Event-ID": unknown},
            **with_context(method, "x"),
        )
        assert refused.status == 404
        assert refused.body is not None
        assert refused.body["code"] == "unknown_task"
    await assert_nothing_queued(redis, stack.prefix)


async def test_an_index_out_of_range_of_a_real_task_is_refused(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    # Once a 200 stream went out, a failing range read broke it without a terminal event, and
    # EventSource would have retried the same id forever.
    api = await stack.api()
    await stack.worker()
    url = f"{api.url}/generate"
    done = (await read_sse(client, "GET", url, params={"context": "real task"})).terminal
    for index in ("-2", "-100", "99999999999999999999999"):
        refused = await read_sse(
            client, "GET", url, headers={"Last-Event-ID": f"{done.data['task_id']}:{index}"}
        )
        assert refused.status == 422, (index, refused.kinds)
        assert refused.body is not None
        assert refused.body["code"] == "invalid_last_event_id"


async def test_three_clients_follow_one_task_on_one_api(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    """They share the process's one subscription; one leaving does not end the others."""
    api = await stack.api()
    await stack.worker()
    url = f"{api.url}/generate"
    first_events: list[str] = []

    def note(events: list[Event]) -> bool:
        first_events[:] = [e.id for e in events]
        return False

    original = asyncio.create_task(
        read_sse(client, "GET", url, params={"context": CONTEXT}, until=note)
    )
    await eventually(lambda: bool(first_events), 10, "the original stream's `task` event")
    task_id = first_events[0].rpartition(":")[0]
    follow = {"Last-Event-ID": f"{task_id}:-1"}
    leaving = asyncio.create_task(
        read_sse(client, "GET", url, until=after_tokens(2), headers=follow)
    )
    staying = asyncio.create_task(read_sse(client, "GET", url, headers=follow))
    first, left, stayed = await asyncio.gather(original, leaving, staying)
    assert left.kinds == ["task", "token", "token"]
    for stream in (first, stayed):
        assert stream.terminal.kind == "done"
        assert stream.text == stream.terminal.data["text"] == ANSWER
        assert [e.id for e in stream.tokens] == [f"{task_id}:{i}" for i in range(10)]
    assert await task_ids(redis, stack.prefix) == {task_id}
