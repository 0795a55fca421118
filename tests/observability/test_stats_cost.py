"""/stats is bounded and shared: a full window is not read whole, and calls that arrive together
share one computation (several at once used to stall the API for a second)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.api.statsview import SharedReport
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.keys import Keys
from llm_batcher.stats import MAX_RECORDS_READ
from tests.support.processes import Stack

RECORDS = MAX_RECORDS_READ + 2000


async def _fill_window(redis: Redis, prefix: str, n: int) -> None:
    """``n`` outcome records that ended in the last few seconds, as ending.lua writes them."""
    now = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        timings = {"queue_ms": 1, "ttft_ms": 2, "total_ms": i, "batch_size": 4, "worker": "w"}
        record = {"task_id": f"t{i}", "at_ms": now - i, "outcome": "done", "code": "", **timings}
        pipe.zadd(Keys(prefix).stats, {json.dumps(record): now - i})
    await pipe.execute()


async def _range_reads(redis: Redis) -> int:
    info = await redis.info("commandstats")
    return int(info.get("cmdstat_zrevrangebyscore", {}).get("calls", 0))


@pytest.mark.system
async def test_concurrent_calls_share_one_bounded_read(
    own_stack: Stack, own_redis: EmbeddedRedis, client: httpx.AsyncClient
) -> None:
    api = await own_stack.api()
    async with Redis.from_url(own_redis.url) as redis:
        await _fill_window(redis, own_stack.prefix, RECORDS)
        reads_before = await _range_reads(redis)
        answers = await asyncio.gather(*(client.get(f"{api.url}/stats") for _ in range(8)))
        reads = await _range_reads(redis) - reads_before
    reports = [a.json() for a in answers]
    assert all(a.status_code == 200 for a in answers)
    assert reads == 1  # one computation for the eight calls
    report = reports[0]
    assert report["sampled"] == MAX_RECORDS_READ  # the latest records only
    assert report["requests"]["total"] == RECORDS  # counted over the whole window
    assert report["slowest"][0]["total_ms"] == MAX_RECORDS_READ - 1
    assert all(r == report for r in reports)


async def test_a_shared_report_is_computed_once_while_fresh() -> None:
    calls = 0
    release = asyncio.Event()

    async def compute() -> dict[str, object]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"call": calls}

    shared = SharedReport(compute, max_age_s=60)
    waiters = [asyncio.create_task(shared.get()) for _ in range(5)]
    await asyncio.sleep(0)  # let them all start waiting
    waiters[0].cancel()  # one caller giving up does not cancel the computation of the others
    release.set()
    assert await asyncio.gather(*waiters[1:]) == [{"call": 1}] * 4
    assert await shared.get() == {"call": 1} and calls == 1  # still fresh


async def test_a_failed_computation_is_not_kept() -> None:
    calls = 0

    async def compute() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("Redis went away")
        return {"call": calls}

    shared = SharedReport(compute, max_age_s=60)
    with pytest.raises(ConnectionError):
        await shared.get()
    assert await shared.get() == {"call": 2}
