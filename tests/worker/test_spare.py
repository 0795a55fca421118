"""The spare LLM child (worker/spare.py): started ahead of its batch, it runs the next batch; one
that dies while waiting is replaced and runs nothing; shutdown leaves no LLM process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from redis.asyncio import Redis

from llm_batcher.codec import TokenLine, decode_line, encode_context_file
from llm_batcher.worker.spare import SpareLauncher
from tests.support.processes import batch_dirs, llm_children, running_worker
from tests.support.results import (
    assert_complete_answer,
    assert_error,
    make_queue,
    submit,
    wait_result,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

STDIN_FLAG = "--files-from-stdin"


def pids(worker_pid: int) -> set[int]:
    return {p.pid for p in llm_children(worker_pid)}


def gone(pid: int) -> bool:
    """Not running: reaped, or at least dead."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def one_spare(worker_pid: int) -> psutil.Process:
    await eventually(lambda: len(llm_children(worker_pid)) == 1, 20, "the spare LLM")
    [spare] = llm_children(worker_pid)
    return spare


async def test_the_spare_runs_the_next_batch_and_a_new_spare_follows(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tmp_dir = tmp_path / "llmtmp"
    tmp_dir.mkdir()
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0, tmp_dir=tmp_dir) as (
        worker,
        _,
    ):
        spare = await one_spare(worker.pid)
        assert spare.cmdline()[-1] == STDIN_FLAG  # no context file on its command line
        assert batch_dirs(tmp_dir) == []  # it waits without a batch
        body = "w0 w1 w2 w3 w4 w5 w6 w7"
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=250\n{body}")  # about 2 s
        result_key = queue.keys.result(task_id)
        await eventually(lambda: redis.exists(result_key), 10, "the batch to stream")
        # the spare is running the batch, and a new spare waits behind it
        await eventually(lambda: len(pids(worker.pid)) == 2, 10, "the next spare")
        assert spare.pid in pids(worker.pid)
        assert len(batch_dirs(tmp_dir)) == 1
        assert_complete_answer(await wait_result(queue, task_id), body)
        await eventually(lambda: gone(spare.pid), 10, "the batch's LLM to exit")
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after the batch")
        [next_spare] = llm_children(worker.pid)
        assert next_spare.pid != spare.pid
        assert next_spare.cmdline()[-1] == STDIN_FLAG


async def test_a_spare_that_dies_while_waiting_is_replaced_and_runs_no_batch(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0) as (worker, _):
        first = await one_spare(worker.pid)
        first.send_signal(signal.SIGKILL)
        await eventually(lambda: gone(first.pid), 10, "the spare to die")
        await eventually(lambda: pids(worker.pid) - {first.pid} != set(), 20, "a replacement spare")
        await eventually(lambda: "the spare LLM exited with status -9" in worker.log(), 10)
        task_id = await submit(queue, "@mock ttft_ms=0 itl_ms=0\nafter the replacement")
        entries = await wait_result(queue, task_id)
    done = assert_complete_answer(entries, "after the replacement")
    assert done.data is not None
    assert done.data["attempt"] == 1  # the dead spare never had it


async def test_a_hung_batch_is_killed_and_only_the_next_spare_is_left(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tmp_dir = tmp_path / "llmtmp"
    tmp_dir.mkdir()
    queue = make_queue(redis, key_prefix)
    async with running_worker(
        redis_url, key_prefix, tmp_path, window_ms=0, batch_timeout_s=2, tmp_dir=tmp_dir
    ) as (worker, _):
        hung = await one_spare(worker.pid)
        task_id = await submit(queue, "@mock ttft_ms=0 itl_ms=0 fail=hang fail_after=1\nstuck here")
        assert_error(await wait_result(queue, task_id, timeout_s=15), "llm_timeout")
        await eventually(lambda: gone(hung.pid), 5, "the hung LLM to be gone")
        await eventually(lambda: len(pids(worker.pid)) == 1, 10, "only the next spare")
        assert hung.pid not in pids(worker.pid)
        await eventually(lambda: batch_dirs(tmp_dir) == [], 5, "no folder after the hang")


async def test_shutdown_stops_and_reaps_the_spare(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    async with running_worker(redis_url, key_prefix, tmp_path) as (worker, _):
        spare = await one_spare(worker.pid)
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
    assert gone(spare.pid)
    assert f"spare LLM {spare.pid} stopped" in worker.log()  # by the worker, not by chance
    assert "Traceback" not in worker.log()


async def test_a_killed_workers_spare_exits_on_its_own(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL skips the shutdown; the spare sees its stdin close and exits."""
    async with running_worker(redis_url, key_prefix, tmp_path) as (worker, _):
        spare = await one_spare(worker.pid)
        worker.kill_group()
        await eventually(lambda: gone(spare.pid), 10, "the orphaned spare to exit")


# A command that speaks the stdin protocol (docs/protocol.md, part 1) without being llm-mock.
STDIN_LLM = """
import base64, json, sys
paths = []
for line in sys.stdin.buffer:
    if line == b"\\n":
        break
    paths.append(line.rstrip(b"\\n").decode())
for i, path in enumerate(paths):
    text = base64.b64decode(open(path, "rb").read()).decode()
    print(json.dumps({"index": i, "token": text}), flush=True)
"""


async def test_launcher_hands_paths_to_a_spare_and_close_leaves_nothing(tmp_path: Path) -> None:
    script = tmp_path / "stdin_llm.py"
    script.write_text(STDIN_LLM)
    files = []
    for i, text in enumerate(["first", "second"]):
        path = tmp_path / f"context-{i}.b64"
        path.write_bytes(encode_context_file(text))
        files.append(str(path))
    launcher = SpareLauncher([sys.executable, str(script)], dict(os.environ))
    launcher.open()
    try:
        await eventually(lambda: launcher.spare is not None, 10, "a spare")
        spare = launcher.spare
        assert spare is not None
        child = await launcher.start(files)
        assert child is spare
        assert child.proc.stdout is not None
        output = await asyncio.wait_for(child.proc.stdout.read(), 10)
        lines = [decode_line(line, 2) for line in output.splitlines()]
        assert lines == [TokenLine(0, "first"), TokenLine(1, "second")]
        assert await asyncio.wait_for(child.proc.wait(), 10) == 0
        await child.stop()
        await eventually(lambda: launcher.spare not in (None, spare), 10, "the next spare")
        waiting = launcher.spare
    finally:
        await launcher.close()
    assert waiting is not None
    assert waiting.proc.returncode is not None  # stopped and reaped
    assert launcher.spare is None
