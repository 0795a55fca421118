"""Tasks taken from a worker while its batch runs (BatchRunner.lose, which the lease renewal
calls with the entries it finds gone), against a real Redis and the real mock LLM: their output
is dropped, a batch-mate still held runs on, and a batch with no task left stops its LLM at
once, even one that has written nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from redis.asyncio import Redis

from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from llm_batcher.settings import WorkerSettings
from llm_batcher.worker.batch import BatchRunner
from tests.support.processes import batch_dirs, llm_children
from tests.support.results import (
    assert_complete_answer,
    make_queue,
    start_next,
    submit,
    tokens_written,
    wait_result,
)
from tests.support.sse import words
from tests.support.waiting import eventually


async def started(queue: TaskQueue, contexts: list[str]) -> list[StartedTask]:
    """Queue the contexts, then claim and start each, as a worker does."""
    await queue.claims.ensure_group()
    ids = [await submit(queue, context) for context in contexts]
    tasks = [await start_next(queue) for _ in ids]
    assert [t.task_id for t in tasks] == ids
    return tasks


def make_runner(queue: TaskQueue, redis_url: str, key_prefix: str, tmp_path: Path) -> BatchRunner:
    settings = WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        worker_id="w1",
        llm_files="argv",  # no spare LLM: the batch's is the only child of this process
        mock_directives=True,
        tmp_dir=str(tmp_path),
    )
    return BatchRunner(queue, settings)


async def test_a_lost_task_is_dropped_and_its_batch_mate_runs_on(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    bodies = [words(40, "lost"), words(40, "kept")]  # 2 s of tokens each
    lost, kept = await started(queue, [f"@mock ttft_ms=0 itl_ms=50\n{b}" for b in bodies])
    runner = make_runner(queue, redis_url, key_prefix, tmp_path)
    batch = asyncio.create_task(runner.run([lost, kept], "b"))
    try:
        await eventually(lambda: tokens_written(queue, lost.task_id), 10, "the first tokens")
        runner.lose([lost.entry_id])
        assert await asyncio.wait_for(batch, 20) == []  # nothing to retry
    finally:
        batch.cancel()
    assert_complete_answer(await wait_result(queue, kept.task_id, 5), bodies[1])
    # the lost task's answer stopped where it was: no more tokens, no `done` from this worker
    cut = await tokens_written(queue, lost.task_id)
    assert 0 < cut < 40, cut
    assert await redis.hget(queue.keys.task(lost.task_id), "state") == b"running"


async def test_a_batch_with_no_task_left_stops_its_silent_llm_at_once(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    # a minute to the first token (a long prefill): no write would be refused before that
    tasks = await started(queue, [f"@mock ttft_ms=60000\nsilent {i}" for i in range(2)])
    runner = make_runner(queue, redis_url, key_prefix, tmp_path)
    batch = asyncio.create_task(runner.run(tasks, "b"))
    try:
        await eventually(lambda: llm_children(os.getpid()), 10, "the batch's LLM to start")
        runner.lose([t.entry_id for t in tasks])
        assert await asyncio.wait_for(batch, 10) == []
    finally:
        batch.cancel()
    assert llm_children(os.getpid()) == []  # stopped and reaped
    assert batch_dirs(tmp_path) == []  # its context files removed
    for task in tasks:
        assert await tokens_written(queue, task.task_id) == 0
