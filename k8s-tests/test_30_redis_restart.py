"""The Redis pod restarts while tasks wait in the queue: they survive it (the append-only file
is on the PersistentVolumeClaim), and their clients get their whole answers afterwards."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from kube import Release, wait_for
from streams import answer, assert_mock_answer, contexts
from tests.support.sse import Stream
from tests.support.waiting import eventually

from conftest import Api, wait_ready

pytestmark = pytest.mark.timeout(900)

QUEUED = 4
DEPTH = re.compile(r"^llm_batcher_queue_depth(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def queue_depth(metrics_url: str) -> float:
    """llm_batcher_queue_depth as the API exports it; -1 while it cannot say (Redis down, or
    no API pod ready to forward to)."""
    try:
        match = DEPTH.search(httpx.get(metrics_url, timeout=10).text)
    except httpx.HTTPError:
        return -1.0
    return float(match.group(1)) if match else -1.0


def gave_up_on_redis(stream: Stream) -> bool:
    """The API ended the stream because Redis was unreachable for longer than it waits (10 s):
    the task itself is still queued, and the client resumes it."""
    end = stream.terminals[-1] if stream.terminals else None
    return end is not None and end.kind == "error" and end.data.get("code") == "redis_unavailable"


async def test_queued_tasks_survive_a_redis_restart(
    release: Release, api: Api, client: httpx.AsyncClient
) -> None:
    texts = contexts(QUEUED, tokens=10, tag="redis")
    streams = [Stream() for _ in texts]
    with release.workers_held_at(0):
        clients = [
            asyncio.create_task(answer(client, api.url, t, s))
            for t, s in zip(texts, streams, strict=True)
        ]
        try:
            await eventually(lambda: all(s.events for s in streams), 60, "every task queued")
            await asyncio.to_thread(
                wait_for, lambda: queue_depth(api.metrics_url) >= QUEUED, 60, "the queue depth"
            )
            (redis,) = await asyncio.to_thread(release.pods, "redis")
            await asyncio.to_thread(release.delete_pod, redis.metadata.name)
            await asyncio.to_thread(
                wait_for,
                lambda: any(
                    p.metadata.uid != redis.metadata.uid for p in release.ready_pods("redis")
                ),
                300,
                "a new Redis pod, ready",
            )
            await asyncio.to_thread(  # the tasks are back, read from the append-only file
                wait_for, lambda: queue_depth(api.metrics_url) >= QUEUED, 60, "the queue back"
            )
        except BaseException:
            for task in clients:
                task.cancel()
            raise
    async with asyncio.timeout(300):
        done = await asyncio.gather(*clients)
        for stream, text in zip(done, texts, strict=True):
            if gave_up_on_redis(stream):
                stream.events.pop()  # what a client keeps: the events up to the last id
                await answer(client, api.url, text, stream)
    for stream, text in zip(done, texts, strict=True):
        assert_mock_answer(stream, text)
    await asyncio.to_thread(wait_ready, release)
