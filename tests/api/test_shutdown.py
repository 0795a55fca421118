"""SIGTERM on an API process: readiness fails at once, open streams may finish within the grace
time, the rest are closed without a terminal event (to resume elsewhere), exit status 0."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.contract import Event
from tests.support.processes import Stack
from tests.support.results import task_ids, task_state
from tests.support.sse import Stream, read_sse, sse_events, words

pytestmark = pytest.mark.system

GRACE_S = 2


async def wait_exit(proc_wait: object, timeout_s: float) -> int:
    """The exit status of a process, waited for off the event loop."""
    return await asyncio.to_thread(proc_wait, timeout_s)  # type: ignore[arg-type]


async def test_sigterm_closes_long_streams_for_them_to_resume_elsewhere(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    # The grace leaves 2 s for the test's two requests below before the stream is closed, and
    # its last token would come over 3 s after that: wide margins both ways on a loaded machine.
    draining = await stack.api(shutdown_grace_s=GRACE_S)
    other = await stack.api()
    await stack.worker()
    answer = words(30)
    context = "@mock ttft_ms=0 itl_ms=200\n" + answer  # six seconds of tokens
    events: list[Event] = []
    url = f"{draining.url}/generate"
    async with client.stream("GET", url, params={"context": context}) as response:
        async for event in sse_events(response):
            events.append(event)
            if len(events) == 3:  # task and two tokens
                sent_at = time.monotonic()
                draining.proc.signal(signal.SIGTERM)
                readyz = await client.get(f"{draining.url}/readyz")
                assert readyz.status_code == 503
                assert readyz.json()["draining"] is True
                refused = await client.get(url, params={"context": "too late"})
                assert refused.status_code == 503
                assert refused.json()["code"] == "shutting_down"
    closed_after_s = time.monotonic() - sent_at
    first = Stream(events)
    # Closed before its end (no terminal event, tokens missing), and not before the grace time:
    # a lower bound, which load cannot break (it only delays).
    assert not first.terminals, first.kinds
    assert 2 <= len(first.tokens) < 30
    assert closed_after_s >= GRACE_S - 0.1, closed_after_s
    assert await wait_exit(draining.proc.wait, 10) == 0

    rest = await read_sse(
        client,
        "GET",
        f"{other.url}/generate",
        params={"context": context},
        headers={"Last-Event-ID": events[-1].id},
    )
    assert rest.terminal.kind == "done"
    task_id = events[0].data["task_id"]
    ids = [e.id for e in first.tokens + rest.tokens]
    assert ids == [f"{task_id}:{i}" for i in range(30)]  # no token missing or twice
    assert first.text + rest.text == answer == rest.terminal.data["text"]
    assert await task_ids(redis, stack.prefix) == {task_id}


async def test_a_stream_that_ends_within_the_grace_time_gets_its_done(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    # A grace time far longer than the wait for the exit below: an exit within that wait is one
    # that did not wait out the grace (no elapsed time is asserted).
    api = await stack.api(shutdown_grace_s=600)
    await stack.worker()
    answer = words(8)
    context = "@mock ttft_ms=0 itl_ms=100\n" + answer  # under a second
    events: list[Event] = []
    async with client.stream("GET", f"{api.url}/generate", params={"context": context}) as response:
        async for event in sse_events(response):
            events.append(event)
            if len(events) == 2:
                api.proc.signal(signal.SIGTERM)
    stream = Stream(events)
    assert stream.terminal.kind == "done"
    assert stream.text == answer
    # the process exits once its last stream ended, without waiting out the grace time
    assert await wait_exit(api.proc.wait, 60) == 0


async def test_a_task_still_queued_at_shutdown_is_not_cancelled(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    """Closing its stream for shutdown is not the client going away: the task stays queued."""
    draining = await stack.api(shutdown_grace_s=0)
    other = await stack.api()
    url = f"{draining.url}/generate"
    events: list[Event] = []
    async with client.stream("GET", url, params={"context": "waits"}) as response:
        async for event in sse_events(response):
            events.append(event)
            draining.proc.signal(signal.SIGTERM)  # no worker: the task is still queued
    assert [e.kind for e in events] == ["task"]
    assert await wait_exit(draining.proc.wait, 10) == 0
    task_id = events[0].data["task_id"]
    assert await task_state(redis, stack.prefix, task_id) == ("queued", None)

    await stack.worker()
    rest = await read_sse(
        client, "GET", f"{other.url}/generate", headers={"Last-Event-ID": events[0].id}
    )
    assert rest.terminal.kind == "done"
    assert rest.text == "waits"
