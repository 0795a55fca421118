"""Batch formation: full batches start at once, partial ones after the window, bursts are shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import WORKER_GROUP
from tests.support.contexts import FAST
from tests.support.processes import start_worker
from tests.support.results import answer, make_queue, submit, terminal, wait_result
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

LONG_WINDOW_MS = 60_000
"""A window no passing test waits out: a task that did would time out in wait_result first."""


async def test_four_tasks_run_as_one_batch_at_once(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    ids = [await submit(queue, f"{FAST}context number {i}") for i in range(4)]
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=LONG_WINDOW_MS)
    try:
        results = [await wait_result(queue, t) for t in ids]
    finally:
        worker.stop()
    for i, entries in enumerate(results):
        done = terminal(entries)
        assert done.kind == "done", done
        assert done.data is not None
        assert done.data["batch_size"] == 4
        # Started at once although the window is a minute: a full batch does not wait. The
        # bound, half the window, leaves seconds for the worker's start on a loaded machine.
        assert done.data["total_ms"] < LONG_WINDOW_MS / 2
        assert answer(entries) == f"context number {i}"
        assert done.data["text"] == answer(entries)


async def test_one_task_runs_alone_after_the_window(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=300)
    try:
        task_id = await submit(queue, f"{FAST}alone")
        done = terminal(await wait_result(queue, task_id))
    finally:
        worker.stop()
    assert done.kind == "done"
    assert done.data is not None
    assert done.data["batch_size"] == 1
    assert done.data["queue_ms"] >= 300 - 5  # waited for the window


async def test_adaptive_a_lone_task_at_low_load_starts_without_the_window(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    worker, _ = await start_worker(
        redis_url, key_prefix, tmp_path, window_ms=LONG_WINDOW_MS, window_policy="adaptive"
    )
    try:
        dones = []
        for i in range(3):  # one at a time: nothing ever arrives within a window of another
            task_id = await submit(queue, f"{FAST}alone {i}")
            dones.append(terminal(await wait_result(queue, task_id)))
    finally:
        worker.stop()
    assert [d.kind for d in dones] == ["done"] * 3
    assert all(d.data is not None and d.data["batch_size"] == 1 for d in dones)
    # the fixed policy would hold each for the whole minute (half of it: room for a loaded machine)
    assert all(d.data is not None and d.data["queue_ms"] < LONG_WINDOW_MS / 2 for d in dones)


async def test_adaptive_waits_for_mates_when_tasks_arrive_together(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    window_ms = 300
    worker, _ = await start_worker(
        redis_url, key_prefix, tmp_path, window_ms=window_ms, window_policy="adaptive"
    )
    try:
        # earlier arrivals came in pairs: a mate is likely, so the next lone arrival waits
        for i in range(3):
            pair = [await submit(queue, f"{FAST}pair {i}.{k}") for k in range(2)]
            for task_id in pair:
                await wait_result(queue, task_id)
        # an arrival is evidence once a window has passed after it (worker/window.py)
        newest = max(await queue.claims.recent_arrivals())
        await eventually(lambda: now_ms() > newest + window_ms, what="the pairs' windows to pass")
        first = await submit(queue, f"{FAST}first of a pair")

        async def first_claimed() -> bool:
            pending = await queue.redis.xpending(queue.keys.tasks, WORKER_GROUP)
            return int(pending["pending"]) == 1

        await eventually(first_claimed, what="the worker to claim the first task alone")
        second = await submit(queue, f"{FAST}second of a pair")
        dones = [terminal(await wait_result(queue, t)) for t in (first, second)]
    finally:
        worker.stop()
    assert [d.kind for d in dones] == ["done", "done"]
    assert dones[0].data is not None and dones[1].data is not None
    assert dones[0].data["batch_id"] == dones[1].data["batch_id"]  # it waited for the second
    assert dones[0].data["batch_size"] == 2


async def test_six_tasks_run_as_four_then_two(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    ids = [await submit(queue, f"{FAST}six {i}") for i in range(6)]
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=200)
    try:
        results = [terminal(await wait_result(queue, t)) for t in ids]
    finally:
        worker.stop()
    sizes = [r.data["batch_size"] for r in results if r.data]
    assert sizes == [4, 4, 4, 4, 2, 2]
    assert len({r.data["batch_id"] for r in results if r.data}) == 2


async def test_two_workers_share_a_burst(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    workers = [
        (await start_worker(redis_url, key_prefix, tmp_path, window_ms=100))[0] for _ in range(2)
    ]
    try:
        slow = "@mock ttft_ms=400 itl_ms=0\n"
        ids = await asyncio.gather(*(submit(queue, f"{slow}burst {i}") for i in range(8)))
        results = [await wait_result(queue, t) for t in ids]
    finally:
        for w in workers:
            w.stop()
    dones = [terminal(r) for r in results]
    assert all(d.kind == "done" for d in dones)
    assert [answer(r) for r in results] == [f"burst {i}" for i in range(8)]
    assert len({d.data["worker"] for d in dones if d.data}) == 2
    assert max(d.data["batch_size"] for d in dones if d.data) <= 4


async def test_idle_workers_do_not_split_a_burst_that_fits_one_window(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    workers = [
        (await start_worker(redis_url, key_prefix, tmp_path, window_ms=500))[0] for _ in range(2)
    ]
    try:
        ids = []
        for i in range(4):  # arriving one by one, well within one window
            ids.append(await submit(queue, f"{FAST}trickle {i}"))
            await asyncio.sleep(0.02)
        dones = [terminal(await wait_result(queue, t)) for t in ids]
    finally:
        for w in workers:
            w.stop()
    assert [d.data["batch_size"] for d in dones if d.data] == [4, 4, 4, 4]
    assert len({d.data["batch_id"] for d in dones if d.data}) == 1
