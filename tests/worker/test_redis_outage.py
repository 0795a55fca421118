"""A worker outlives a Redis outage: not ready while Redis is down, working once it is back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.keys import WORKER_GROUP
from tests.support.contexts import FAST
from tests.support.processes import running_worker
from tests.support.results import assert_complete_answer, make_queue, submit, wait_result
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def status_of(port: int, path: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(f"http://127.0.0.1:{port}{path}")).status_code


async def test_worker_waits_out_a_redis_outage_and_serves_after_it(
    own_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path
) -> None:
    async with running_worker(own_redis.url, key_prefix, tmp_path, lease_ms=1500) as (
        worker,
        port,
    ):
        async with client(own_redis.url) as redis:
            queue = make_queue(redis, key_prefix)
            before = await submit(queue, f"{FAST}before the outage")
            assert_complete_answer(await wait_result(queue, before), "before the outage")
        assert await status_of(port, "/readyz") == 200

        own_redis.stop()
        await eventually(lambda: ready_is(port, 503), 10, "/readyz to answer 503")
        assert await status_of(port, "/healthz") == 200
        await eventually(lambda: "Redis unavailable" in worker.log(), 5, "the worker to notice")
        assert worker.popen.poll() is None  # still running

        own_redis.start()  # same port, empty data
        await eventually(lambda: ready_is(port, 200), 15, "/readyz to answer 200 again")
        async with client(own_redis.url) as redis:
            queue = make_queue(redis, key_prefix)
            after = await submit(queue, f"{FAST}after the outage")
            done = assert_complete_answer(await wait_result(queue, after), "after the outage")
        assert worker.popen.poll() is None
    assert done.data is not None
    assert done.data["attempt"] == 1


async def ready_is(port: int, status: int) -> bool:
    try:
        return await status_of(port, "/readyz") == status
    except httpx.HTTPError:
        return False


async def test_a_task_claimed_when_redis_fails_is_not_held_forever(
    key_prefix: str, tmp_path: Path
) -> None:
    """Redis (with its data on disk) fails while the worker waits in the batch window holding one
    claimed task. After Redis is back, the task must still run: the worker may not keep renewing
    a claim it has dropped."""
    server = EmbeddedRedis(tmp_path / "aof", appendonly=True)
    server.start()
    try:
        async with running_worker(
            server.url, key_prefix, tmp_path, worker_id="windowed", lease_ms=1500, window_ms=4000
        ):
            async with client(server.url) as redis:
                queue = make_queue(redis, key_prefix)
                await queue.claims.ensure_group()
                task_id = await submit(queue, f"{FAST}claimed before the outage")

                async def claimed() -> bool:
                    pending = await redis.xpending(queue.keys.tasks, WORKER_GROUP)
                    return int(pending["pending"]) == 1

                await eventually(claimed, 5, "the worker to claim the task")
            server.stop()  # during the 4 s window: the claim is on disk, the batch not started
            server.start()
            async with client(server.url) as redis:
                queue = make_queue(redis, key_prefix)
                assert await redis.hget(queue.keys.task(task_id), "state") == b"queued"
                entries = await wait_result(queue, task_id, timeout_s=15)
        assert_complete_answer(entries, "claimed before the outage")
    finally:
        server.stop()


async def test_redis_refusing_writes_mid_batch_loses_nothing(
    own_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path
) -> None:
    """Redis answers but refuses writes (out of memory) for a moment during a batch: the worker
    retries its tokens with backoff (for LLMB_REDIS_FULL_WAIT_S), the batch goes on once writes
    come back, the answer is whole, and the worker keeps its heartbeat."""
    body = " ".join(f"word{i}" for i in range(12))
    worker_ctx = running_worker(own_redis.url, key_prefix, tmp_path, worker_id="oom", lease_ms=1500)
    async with worker_ctx as (worker, _), client(own_redis.url) as redis:
        queue = make_queue(redis, key_prefix)
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=150\n{body}")
        result_key = queue.keys.result(task_id)
        await eventually(lambda: _at_least(redis, result_key, 2), 10, "the first tokens")
        await redis.config_set("maxmemory", 1)  # every write is refused with OOM
        try:
            await eventually(
                lambda: "Redis is full" in worker.log(), 10, "the batch to hit the refusal"
            )
            await eventually(
                lambda: "heartbeat failed" in worker.log(), 5, "the heartbeat to hit the refusal"
            )
        finally:
            await redis.config_set("maxmemory", 0)
        restored_ms = now_ms()
        entries = await wait_result(queue, task_id, timeout_s=15)
        done = assert_complete_answer(entries, body)
        assert done.data is not None
        assert done.data["attempt"] == 1  # the same attempt, waited out: no takeover
        assert "redis_full" not in worker.log()

        async def heartbeat_after_restore() -> bool:
            score = await redis.zscore(queue.keys.workers, "oom")
            return score is not None and score > restored_ms

        await eventually(heartbeat_after_restore, 5, "a heartbeat after writes came back")
        assert worker.popen.poll() is None


async def _at_least(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) >= n


async def test_after_a_redis_restart_stale_connections_cost_no_batch(
    own_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path
) -> None:
    """A batch's tasks are started each on a connection of the pool, which a Redis restart leaves
    dead: the first batch after the restart must still start, on connections made again, not
    wait for its lease to lapse and be taken over (found by the chaos soak: each dead connection
    of the pool failed one batch, whose tasks then waited 5 s)."""
    bodies = [f"{FAST}restart {i} " + " ".join(f"w{k}" for k in range(4)) for i in range(4)]
    async with running_worker(
        own_redis.url, key_prefix, tmp_path, lease_ms=5000, window_ms=2000, max_batch=4
    ) as (worker, port):
        for label in ("before", "after"):
            async with client(own_redis.url) as redis:
                queue = make_queue(redis, key_prefix)
                await queue.claims.ensure_group()
                ids = [await submit(queue, f"{body} {label}") for body in bodies]
                results = [await wait_result(queue, task_id, timeout_s=20) for task_id in ids]
            for entries, body in zip(results, bodies, strict=True):
                done = assert_complete_answer(entries, f"{body} {label}".split("\n", 1)[1])
                assert done.data is not None and done.data["attempt"] == 1, (label, done.data)
            if label == "before":
                own_redis.stop()
                own_redis.start()  # same port, empty data; the pool's connections are dead
                await eventually(lambda: ready_is(port, 200), 15, "/readyz to answer 200 again")
        assert "Redis failed during a batch" not in worker.log()
