"""A thousand concurrent streams on one API process: every client gets its own whole answer,
while the process keeps a bounded number of Redis connections."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import psutil
import pytest
from redis.asyncio import Redis

from llm_batcher.contract import Event
from tests.support.processes import Stack
from tests.support.results import queue_length
from tests.support.sse import Stream, after_task, read_sse, sse_events, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

STREAMS = 1000
MAX_REDIS_CONNECTIONS = 10
SAMPLE_EVERY_S = 0.05


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


@dataclass
class Usage:
    """What one API process holds, sampled."""

    process: psutil.Process
    redis_port: int
    peak_connections: int = 0
    samples: list[int] = field(default_factory=list)

    def redis_connections(self) -> int:
        return sum(
            1
            for c in self.process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == self.redis_port and c.status == psutil.CONN_ESTABLISHED
        )

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20

    def sample(self) -> int:
        count = self.redis_connections()
        self.samples.append(count)
        self.peak_connections = max(self.peak_connections, count)
        return count


@contextlib.asynccontextmanager
async def sampling(usage: Usage) -> AsyncIterator[None]:
    """Sample the connections all along, to catch a peak between two looks."""

    async def loop() -> None:
        while True:
            usage.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(loop())
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


async def test_a_thousand_concurrent_streams(stack: Stack, redis: Redis, redis_url: str) -> None:
    raise_fd_limit(STREAMS + 500)
    api = await stack.api()
    url = f"{api.url}/generate"
    usage = Usage(psutil.Process(api.proc.pid), urlparse(redis_url).port or 6379)
    opened: set[int] = set()
    limits = httpx.Limits(max_connections=STREAMS + 100, max_keepalive_connections=STREAMS + 100)

    async def one(client: httpx.AsyncClient, i: int) -> Stream:
        events: list[Event] = []
        context = f"stream {i}: " + words(6, f"s{i}.")
        async with client.stream("GET", url, params={"context": context}) as response:
            assert response.status_code == 200, await response.aread()
            async for event in sse_events(response):
                events.append(event)
                opened.add(i)
        return Stream(events, 200, response.headers)

    async with (
        httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60)) as client,
        sampling(usage),
    ):
        readers = [asyncio.create_task(one(client, i)) for i in range(STREAMS)]

        def all_open() -> bool:
            failed = [r for r in readers if r.done()]
            if failed:  # a refused or broken stream: stop waiting, show why
                failed[0].result()
                raise AssertionError("a stream ended before any worker ran")
            return len(opened) == STREAMS

        # No worker yet: every stream stays open, waiting for its task.
        await eventually(all_open, 40, f"{STREAMS} streams to receive their `task` event")
        at_open_connections = usage.sample()
        at_open_rss_mb = usage.rss_mb()
        assert await queue_length(redis, stack.prefix) == STREAMS
        for _ in range(2):
            await stack.worker(max_batch=64, window_ms=10)
        streams = await asyncio.wait_for(asyncio.gather(*readers), 60)

    print(
        f"MEASURED api_redis_connections_at_1000_streams={at_open_connections} "
        f"api_rss_mb_at_1000_streams={at_open_rss_mb:.1f} "
        f"api_redis_connections_peak={usage.peak_connections} samples={len(usage.samples)}"
    )
    for i, stream in enumerate(streams):
        answer = f"stream {i}: " + words(6, f"s{i}.")
        assert stream.kinds[0] == "task"
        assert stream.terminal.kind == "done", (i, stream.terminal.data)
        assert stream.text == stream.terminal.data["text"] == answer, i
        task_id = stream.events[0].data["task_id"]
        assert [e.id for e in stream.tokens] == [f"{task_id}:{n}" for n in range(8)]
    assert len({s.events[0].data["task_id"] for s in streams}) == STREAMS
    assert 1 <= at_open_connections <= MAX_REDIS_CONNECTIONS
    assert usage.peak_connections <= MAX_REDIS_CONNECTIONS


async def test_a_burst_waits_for_redis_instead_of_being_refused(stack: Stack) -> None:
    """Queueing for the pool and the event loop is no outage: with a plain 0.25 s timeout most
    of a 300-stream burst was refused as "Redis is unreachable" while Redis was fine."""
    api = await stack.api(redis_timeout_s=0.25)
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30)) as client:
        streams = await asyncio.gather(
            *(
                read_sse(
                    client,
                    "GET",
                    f"{api.url}/generate",
                    params={"context": f"burst {i}"},
                    until=after_task,
                )
                for i in range(300)
            )
        )
    refused = [s.body for s in streams if s.status != 200]
    assert refused == [], f"{len(refused)} refused, first: {refused[:1]}"
