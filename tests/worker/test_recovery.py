"""A worker that dies or is stopped loses nothing: its tasks complete, without repeated tokens."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry
from llm_batcher.settings import WorkerSettings
from tests.support.processes import running_worker, start_worker
from tests.support.results import (
    assert_complete_answer,
    holds,
    make_queue,
    submit,
    tokens_written,
    wait_result,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


def slow_body(task: int, words: int) -> str:
    return " ".join(f"t{task}w{i}" for i in range(words))


async def submit_slow_batch(
    queue: TaskQueue, itl_ms: int, words: int, n: int = 4
) -> tuple[list[str], list[str]]:
    bodies = [slow_body(i, words) for i in range(n)]
    ids = [await submit(queue, f"@mock ttft_ms=0 itl_ms={itl_ms}\n{b}") for b in bodies]
    return ids, bodies


async def all_streaming(queue: TaskQueue, ids: list[str], at_least: int) -> bool:
    return all([await tokens_written(queue, t) >= at_least for t in ids])


async def test_sigkill_mid_batch_tasks_complete_on_another_worker(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    lease_ms, words = 1500, 20
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    async with running_worker(
        redis_url, key_prefix, tmp_path, worker_id="victim", lease_ms=lease_ms, window_ms=2000
    ) as (victim, _):
        ids, bodies = await submit_slow_batch(queue, itl_ms=200, words=words)
        await eventually(lambda: holds(queue, "victim", 4), 5, "the victim to hold the batch")
        async with running_worker(
            redis_url, key_prefix, tmp_path, worker_id="rescuer", lease_ms=lease_ms
        ):
            await eventually(lambda: all_streaming(queue, ids, 2), 10, "tokens of every task")
            before = [await tokens_written(queue, t) for t in ids]
            assert all(2 <= n < words for n in before), before  # killed mid-stream
            victim.kill_group()
            killed_at = time.monotonic()
            results = await asyncio.gather(*(wait_result(queue, t, 20) for t in ids))
            recovery_s = time.monotonic() - killed_at

    print(f"\nMEASURED recovery_after_sigkill_s={recovery_s:.2f} (lease {lease_ms} ms, "
          f"re-run of {words} tokens x 200 ms)")  # fmt: skip
    for entries, body in zip(results, bodies, strict=True):
        done = assert_complete_answer(entries, body)  # contiguous ids: no repeat, no gap
        assert done.data is not None
        assert done.data["attempt"] == 2
        assert done.data["worker"] == "rescuer"
    assert recovery_s < 15


async def test_a_killed_workers_tasks_restart_elsewhere_within_3_s_with_default_settings(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """With the default lease (5 s) and heartbeat timeout, the tasks of a worker killed mid-batch
    start again on another worker within 3 s: once its heartbeat lapses, not its lease. The
    time is the one the rescuer's START recorded (attempt_ms), not when this test noticed."""
    defaults = {
        name: WorkerSettings.model_fields[name].default
        for name in ("lease_ms", "heartbeat_timeout_ms")
    }
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    async with running_worker(
        redis_url, key_prefix, tmp_path, worker_id="victim", window_ms=2000, **defaults
    ) as (victim, _):
        ids, bodies = await submit_slow_batch(queue, itl_ms=200, words=20)
        await eventually(lambda: holds(queue, "victim", 4), 5, "the victim to hold the batch")
        async with running_worker(
            redis_url, key_prefix, tmp_path, worker_id="rescuer", **defaults
        ) as (rescuer, _):
            await eventually(lambda: all_streaming(queue, ids, 2), 10, "tokens of every task")
            killed_ms = now_ms()
            victim.kill_group()
            results = await asyncio.gather(*(wait_result(queue, t, 20) for t in ids))
            restarts_ms = [
                int(await redis.hget(queue.keys.task(t), "attempt_ms") or 0) - killed_ms
                for t in ids
            ]
            log = rescuer.log()

    print(f"\nMEASURED restart_after_sigkill_ms={max(restarts_ms)} (default settings)")
    for entries, body in zip(results, bodies, strict=True):
        done = assert_complete_answer(entries, body)
        assert done.data is not None
        assert (done.data["worker"], done.data["attempt"]) == ("rescuer", 2)
    assert "took over 4 task(s) from dead worker(s) victim" in log
    assert all(0 < ms < 3000 for ms in restarts_ms), restarts_ms


async def test_a_worker_restarted_under_its_id_hands_on_what_its_killed_run_held(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """`up`, Compose and Kubernetes restart a killed worker under the same id, whose heartbeat
    then looks alive: the new run hands on the tasks of the killed one at start-up, without
    waiting for their lease (the default, 5 s)."""
    lease_ms = WorkerSettings.model_fields["lease_ms"].default
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    settings = {"worker_id": "same", "lease_ms": lease_ms, "window_ms": 2000}
    async with running_worker(redis_url, key_prefix, tmp_path, **settings) as (killed, _):
        ids, bodies = await submit_slow_batch(queue, itl_ms=100, words=20)
        await eventually(lambda: all_streaming(queue, ids, 2), 10, "tokens of every task")
        killed_ms = now_ms()
        killed.kill_group()
    (tmp_path / "again").mkdir()  # the new run's log beside the killed one's
    async with running_worker(redis_url, key_prefix, tmp_path / "again", **settings) as (
        again,
        _,
    ):
        results = await asyncio.gather(*(wait_result(queue, t, 20) for t in ids))
        restarts_ms = [
            int(await redis.hget(queue.keys.task(t), "attempt_ms") or 0) - killed_ms for t in ids
        ]
        log = again.log()
    print(f"\nMEASURED restart_under_the_same_id_ms={max(restarts_ms)}")
    for entries, body in zip(results, bodies, strict=True):
        done = assert_complete_answer(entries, body)
        assert done.data is not None
        assert done.data["attempt"] == 2
    assert "handed on 4 task(s) an earlier run of worker same left" in log
    assert all(0 < ms < lease_ms for ms in restarts_ms), restarts_ms


async def test_sigterm_lets_the_running_batch_finish(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=2000)
    try:
        ids, bodies = await submit_slow_batch(queue, itl_ms=150, words=10)
        await eventually(lambda: all_streaming(queue, ids, 1), 10, "the batch to stream")
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        worker.stop()
    assert code == 0
    log = worker.log()
    assert "stopping: letting the running batch finish" in log
    assert "drain time over" not in log
    assert f"worker {worker_id_of(log)} stopped" in log
    for task_id, body in zip(ids, bodies, strict=True):
        done = assert_complete_answer(await queue.results.after(task_id, -1), body)
        assert done.data is not None
        assert done.data["attempt"] == 1
    assert await redis.zscore(queue.keys.workers, worker_id_of(log)) is None  # left the live set


def worker_id_of(log: str) -> str:
    line = next(line for line in log.splitlines() if " ready: health on " in line)
    return line.split("worker ", 1)[1].split(" ready:", 1)[0]


async def test_sigterm_past_the_drain_time_hands_the_batch_to_another_worker(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # A long lease: had the tasks not been handed back, the rescuer would wait 10 s for them.
    lease_ms, words = 10_000, 15
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()  # as the API does at start-up: the test reads the group
    leaving, _ = await start_worker(
        redis_url, key_prefix, tmp_path, worker_id="leaving", lease_ms=lease_ms, window_ms=2000,
        drain_s=0.2,
    )  # fmt: skip
    try:
        ids, bodies = await submit_slow_batch(queue, itl_ms=200, words=words)
        await eventually(lambda: holds(queue, "leaving", 4), 5, "the batch to be claimed")
        async with running_worker(
            redis_url, key_prefix, tmp_path, worker_id="rescuer", lease_ms=lease_ms
        ):
            await eventually(lambda: all_streaming(queue, ids, 2), 10, "tokens of every task")
            leaving.signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            assert await asyncio.to_thread(leaving.wait, 10) == 0
            before = [await tokens_written(queue, t) for t in ids]
            results: list[list[ResultEntry]] = await asyncio.gather(
                *(wait_result(queue, t, 20) for t in ids)
            )
            handover_s = time.monotonic() - stopped_at
    finally:
        leaving.stop()

    log = leaving.log()
    assert "drain time over: cancelling the running batch" in log
    assert "handed back 4 task(s) for other workers" in log
    assert all(n < words for n in before), before  # the batch was cut, not finished
    for entries, body in zip(results, bodies, strict=True):
        done = assert_complete_answer(entries, body)
        assert done.data is not None
        assert (done.data["attempt"], done.data["worker"]) == (2, "rescuer")
    # re-running takes 3 s; waiting for the lease instead would have taken 10 s more
    assert handover_s < lease_ms / 1000, handover_s


async def test_a_live_worker_keeps_its_tasks_through_a_batch_twice_the_lease(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """A worker renews its leases while its batch runs: with another worker idle beside it, a
    batch lasting twice the lease is not taken over (without renewal, the idle worker reclaims
    the tasks after one lease and they bounce between the workers)."""
    lease_ms, itl_ms, words = 1500, 150, 20  # 20 tokens x 150 ms: 3 s, twice the lease
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    settings = {"lease_ms": lease_ms, "window_ms": 2000, "max_batch": 4}
    async with (
        running_worker(redis_url, key_prefix, tmp_path, worker_id="first", **settings) as (a, _),
        running_worker(redis_url, key_prefix, tmp_path, worker_id="second", **settings) as (b, _),
    ):
        ids, bodies = await submit_slow_batch(queue, itl_ms=itl_ms, words=words)
        results = await asyncio.gather(*(wait_result(queue, t, 30) for t in ids))
        logs = a.log() + b.log()

    runners = set()
    for entries, body in zip(results, bodies, strict=True):
        done = assert_complete_answer(entries, body)
        assert done.data is not None
        assert (done.data["attempt"], done.data["batch_size"]) == (1, 4), done.data
        runners.add(done.data["worker"])
    assert len(runners) == 1, runners  # one batch, on one worker, while the other was idle
    assert "took over" not in logs
