"""Clients that hang up: before their task started (it is cancelled and never reaches the LLM),
in the middle of the answer (it costs nothing: the batch completes, the task ends `done`), and
followers of another client's task, whose hang-up never cancels it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.contract import Event
from tests.support.metrics import scrape, value
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


async def _hang_ups(api_url: str, outcome: str) -> float:
    """The /generate streams this API counted as ended by the client, with this outcome."""
    samples = await scrape(f"{api_url}/metrics")
    labels = {"outcome": outcome, "code": "", "endpoint": "generate"}
    return value(samples, "llm_batcher_requests_total", **labels)


async def test_followers_hanging_up_never_cancel_only_the_submitter_may(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    """A follower (Last-Event-ID or last_event_id from -1, GET or POST) hanging up before the
    first token, or a resumer hanging up mid-stream, leaves the submitter's task running: only
    the request that queued it cancels it (the submitter's own hang-up is tested above)."""
    api = await stack.api()  # no worker yet: the task stays queued while the followers leave
    url = f"{api.url}/generate"
    body = words(8)
    seen: list[Event] = []

    def note(events: list[Event]) -> bool:
        seen[:] = events
        return False

    submitter = asyncio.create_task(
        read_sse(client, "GET", url, params={"context": SLOW + body}, until=note)
    )
    await eventually(lambda: bool(seen), 10, "the submitter's `task` event")
    task_id = str(seen[0].data["task_id"])
    from_start = f"{task_id}:-1"
    followers = [
        read_sse(client, "GET", url, until=after_task, headers={"Last-Event-ID": from_start}),
        read_sse(client, "GET", url, until=after_task, params={"last_event_id": from_start}),
        read_sse(client, "POST", url, until=after_task, headers={"Last-Event-ID": from_start}),
    ]
    for left in await asyncio.gather(*followers):
        assert left.kinds == ["task"], left.kinds

    async def only_the_submitter_reads() -> bool:
        samples = await scrape(f"{api.url}/metrics")
        return value(samples, "llm_batcher_open_streams") <= 1

    await eventually(only_the_submitter_reads, 10, "the API to close the followers' streams")
    assert await task_state(redis, stack.prefix, task_id) == ("queued", None)
    assert await _hang_ups(api.url, "disconnected") == len(followers)

    await stack.worker()
    resumers = [
        read_sse(client, "GET", url, until=after_tokens(2), headers={"Last-Event-ID": from_start}),
        read_sse(
            client, "GET", url, until=after_tokens(1), params={"last_event_id": f"{task_id}:2"}
        ),
    ]
    for left in await asyncio.gather(*resumers):
        assert not left.ended_by_server and left.tokens, left.kinds
    stream = await asyncio.wait_for(submitter, 20)
    done = stream.assert_exact(body)
    assert done["attempt"] == 1
    assert await _hang_ups(api.url, "cancelled") == 0
