"""Long-lived background tasks restart after a crash; cancelling one stops it for good."""

from __future__ import annotations

import asyncio

from llm_batcher import metrics
from llm_batcher.background import keep_running, spawn
from tests.support.waiting import eventually


def crashes(task: str) -> float:
    value = metrics.WORKER_REGISTRY.get_sample_value(
        "llm_batcher_background_task_crashes_total", {"task": task}
    )
    return value or 0.0


async def test_a_crashing_task_is_restarted_and_counted() -> None:
    runs: list[int] = []
    third_run = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("boom")
        third_run.set()
        await asyncio.Event().wait()  # then runs until cancelled

    before = crashes("flaky")
    task = keep_running("flaky", flaky, restart_delay_s=0.001)
    try:
        await asyncio.wait_for(third_run.wait(), 5)
        assert runs == [0, 1, 2]
        assert crashes("flaky") == before + 2
    finally:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # cancellation is not swallowed, and no restart follows


async def test_spawned_coroutines_run_to_their_end() -> None:
    done = asyncio.Event()

    async def work() -> None:
        done.set()

    spawn(work(), "test work")
    await eventually(done.is_set, 5, "the spawned coroutine to run")
