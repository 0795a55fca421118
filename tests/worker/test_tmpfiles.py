"""Per-batch context files: private while the batch runs, gone after it however it ended."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support.processes import batch_dirs, llm_children, running_worker
from tests.support.results import (
    assert_complete_answer,
    assert_error,
    make_queue,
    submit,
    wait_result,
)
from tests.support.waiting import eventually


@pytest.mark.system
async def test_batch_folder_is_private_and_removed_after_success_failure_and_hang(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tmp_dir = tmp_path / "llmtmp"
    tmp_dir.mkdir()
    queue = make_queue(redis, key_prefix)
    async with running_worker(
        redis_url, key_prefix, tmp_path, window_ms=0, tmp_dir=tmp_dir, batch_timeout_s=2
    ) as (worker, _):
        # success: while it runs, the context is in a private file, not on the command line
        context = "@mock ttft_ms=0 itl_ms=150\nsecret words on file"
        ok = await submit(queue, context)
        await eventually(lambda: len(batch_dirs(tmp_dir)) == 1, 10, "the batch folder")
        folder = batch_dirs(tmp_dir)[0]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = list(folder.iterdir())
        assert len(files) == 1
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert base64.b64decode(files[0].read_bytes()).decode() == context
        await eventually(lambda: len(llm_children(worker.pid)) == 1, 10, "the LLM to run")
        assert all("secret" not in " ".join(p.cmdline()) for p in llm_children(worker.pid))
        assert_complete_answer(await wait_result(queue, ok), "secret words on file")
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after success")

        crashed = await submit(queue, "@mock ttft_ms=0 itl_ms=0 fail=exit fail_after=1\nx y")
        assert_error(await wait_result(queue, crashed), "llm_crashed")
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after a crash")

        hung = await submit(queue, "@mock ttft_ms=0 fail=hang\nz")
        await eventually(lambda: len(batch_dirs(tmp_dir)) == 1, 10, "the hung batch's folder")
        assert_error(await wait_result(queue, hung), "llm_timeout")
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after a hang")
    assert list(tmp_dir.iterdir()) == []


@pytest.mark.system
async def test_folder_left_by_a_killed_worker_is_removed_by_the_next_one(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tmp_dir = tmp_path / "llmtmp"
    tmp_dir.mkdir()
    queue = make_queue(redis, key_prefix)
    body = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    first_ctx = running_worker(redis_url, key_prefix, tmp_path, window_ms=0, tmp_dir=tmp_dir)
    async with first_ctx as (first, _):
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=200\n{body}")
        result_key = queue.keys.result(task_id)
        await eventually(lambda: redis.exists(result_key), 10, "the batch to stream")
        stale = batch_dirs(tmp_dir)
        assert len(stale) == 1
        first.kill_group()
    assert stale[0].exists()  # SIGKILL left it behind

    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0, tmp_dir=tmp_dir) as (
        second,
        _,
    ):
        assert not stale[0].exists()
        await eventually(
            lambda: "removed 1 batch folder(s) left by dead workers" in second.log(),
            what="the worker's log line about the folder",
        )
        # and the task itself is taken over and completed
        assert_complete_answer(await wait_result(queue, task_id), body)
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after the takeover")


def test_stale_sweep_removes_own_pid_and_dead_pids_but_not_live_ones(tmp_path: Path) -> None:
    from llm_batcher.worker.child import BATCH_DIR_PREFIX, remove_stale_batch_dirs

    own = tmp_path / f"{BATCH_DIR_PREFIX}{os.getpid()}-left-by-an-earlier-pid-1"
    live = tmp_path / f"{BATCH_DIR_PREFIX}{os.getppid()}-a-live-worker"
    dead = tmp_path / f"{BATCH_DIR_PREFIX}999999999-gone"
    for folder in (own, live, dead):
        folder.mkdir()
    assert remove_stale_batch_dirs(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
