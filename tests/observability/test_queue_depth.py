"""llm_batcher_queue_depth, the autoscaling signal: right with no worker, during a burst, and
after a worker died; exported by the API, which always runs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.protocol.claims import QueueDepth
from tests.support.metrics import exports
from tests.support.processes import start_api, start_worker
from tests.support.results import make_queue, submit
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

LEASE_MS = 1500


async def test_depth_with_no_worker_is_exported_by_the_api(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    api, base = await start_api(redis_url, key_prefix, tmp_path, lease_ms=LEASE_MS)
    try:
        for i in range(5):
            await submit(queue, f"waiting {i}")
        assert await queue.claims.depth(LEASE_MS) == QueueDepth(waiting=5, in_flight=0)

        await eventually(
            lambda: exports(
                f"{base}/metrics", llm_batcher_queue_depth=5, llm_batcher_workers_live=0
            ),
            10,
            "the API to export a depth of 5 and no worker",
        )
    finally:
        api.stop()


async def test_depth_during_a_burst_and_after_a_worker_died(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    worker, _ = await start_worker(
        redis_url, key_prefix, tmp_path, lease_ms=LEASE_MS, window_ms=100, max_batch=4
    )
    try:
        for i in range(10):
            await submit(queue, f"@mock ttft_ms=30000\nburst {i}", timeout_s=120)
        # the worker holds one batch of 4; 6 wait
        await eventually(
            lambda: _depth_is(queue, QueueDepth(waiting=6, in_flight=4)), 10, "6 waiting, 4 held"
        )
        worker.kill_group()  # SIGKILL: no hand-back; its 4 tasks wait again once its lease lapses
        await eventually(
            lambda: _depth_is(queue, QueueDepth(waiting=10, in_flight=0)),
            10,
            "the dead worker's tasks to count as waiting",
        )
    finally:
        worker.stop()


async def test_depth_falls_to_zero_when_the_queue_drains(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    for i in range(6):
        await submit(queue, f"@mock ttft_ms=0 itl_ms=0\ndrain {i}")
    assert (await queue.claims.depth(LEASE_MS)).waiting == 6
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, lease_ms=LEASE_MS)
    try:
        await eventually(lambda: _depth_is(queue, QueueDepth(0, 0)), 15, "an empty queue")
    finally:
        worker.signal(signal.SIGTERM)
        worker.stop()


async def _depth_is(queue: object, expected: QueueDepth) -> bool:
    return await queue.claims.depth(LEASE_MS) == expected  # type: ignore[attr-defined,no-any-return]
