"""Tasks that end before a worker runs them: cancelled, dead-lettered, past their deadline."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.tasks import StartedTask
from tests.support.contexts import FAST
from tests.support.processes import running_worker
from tests.support.results import (
    assert_complete_answer,
    assert_error,
    make_queue,
    submit,
    wait_result,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

MAX_ATTEMPTS = 3


def batches_running(log: str, task_id: str) -> list[str]:
    """The worker's log lines of batches that ran the task."""
    return [line for line in log.splitlines() if " running " in line and task_id in line]


async def test_a_task_cancelled_before_start_never_reaches_the_llm(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    cancelled = await submit(queue, f"{FAST}you will never see this")
    assert await queue.tasks.cancel(cancelled)
    kept = await submit(queue, f"{FAST}this one runs")
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=300) as (worker, _):
        assert_complete_answer(await wait_result(queue, kept), "this one runs")
        entries = await wait_result(queue, cancelled)
    assert_error(entries, "cancelled")
    assert entries[:-1] == []
    assert await redis.hget(queue.keys.task(cancelled), "attempt") == b"0"
    log = worker.log()
    assert f"running 1 task(s): {kept}" in log  # the batch it ran held only the other task
    assert cancelled not in log


async def test_a_task_delivered_max_attempts_times_is_dead_lettered(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    task_id = await submit(queue, f"{FAST}poison that killed three workers")
    [claim] = await queue.claims.read_new("crashed-worker", 1, None)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        started = await queue.tasks.start(
            claim, worker="crashed-worker", now_ms=now_ms(),
            max_attempts=MAX_ATTEMPTS,
        )  # fmt: skip
        assert isinstance(started, StartedTask) and started.attempt == attempt
    # as if its lease ran out
    await queue.claims.release("crashed-worker", [claim.entry_id], lease_ms=1500)
    async with running_worker(
        redis_url, key_prefix, tmp_path, worker_id="survivor", max_attempts=MAX_ATTEMPTS
    ) as (worker, _):
        entries = await wait_result(queue, task_id)
        await eventually(lambda: f"task {task_id} not run: dead" in worker.log(), 5, "the log")
    error = assert_error(entries, "dead_letter")
    assert f"delivered {MAX_ATTEMPTS} times" in str(error["message"])
    assert entries[:-1] == []
    assert batches_running(worker.log(), task_id) == []
    [dead] = await queue.dead_letters.entries()
    assert (dead.task_id, dead.code, dead.attempts) == (task_id, "dead_letter", MAX_ATTEMPTS)
    assert dead.worker == "crashed-worker"  # the worker of its last attempt
    assert await redis.xlen(queue.keys.tasks) == 0


async def test_a_task_past_its_deadline_ends_with_timeout(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    task_id = str(uuid.uuid4())
    created = now_ms()
    deadline = created + 200
    assert await queue.tasks.submit(
        task_id, f"{FAST}too late", now_ms=created, deadline_ms=deadline, max_queue=100
    )
    await eventually(lambda: now_ms() > deadline, 5, "the deadline to pass")
    async with running_worker(redis_url, key_prefix, tmp_path) as (worker, _):
        entries = await wait_result(queue, task_id)
        await eventually(lambda: f"task {task_id} not run: timeout" in worker.log(), 5, "the log")
    error = assert_error(entries, "timeout")
    assert "deadline" in str(error["message"])
    assert entries[:-1] == []
    assert batches_running(worker.log(), task_id) == []
