"""`llm-batcher up` as a user runs it: ready lines, a request served, restarts, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psutil
import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import Keys
from llm_batcher.worker.child import BATCH_DIR_PREFIX
from tests.support.processes import alive, command_lines, descendants
from tests.support.sse import generate, words
from tests.support.up import Up
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

RunUp = Callable[..., Awaitable[Up]]
UP_TIMEOUT_S = 30


def up_args(tmp_path: Path, *extra: str) -> list[str]:
    """On a free port: `up` binds it and prints it (Up.api_url)."""
    return [
        "--port", "0", "--workers", "2", "--data-dir", str(tmp_path / "data"),
        "--mock-ttft-ms", "0", "--mock-itl-ms", "0", *extra,
    ]  # fmt: skip


def worker_process(up: Up, worker_id: str) -> psutil.Process:
    """The `llm-batcher worker` process `up` runs as ``worker_id``."""
    for proc, line in command_lines(descendants(up.proc.pid)).items():
        with contextlib.suppress(psutil.NoSuchProcess):
            if line.endswith(" worker") and proc.environ().get("LLMB_WORKER_ID") == worker_id:
                return proc
    raise AssertionError(f"no live {worker_id} under up:\n{up.output()}")


async def test_up_serves_then_stops_on_sigterm_leaving_nothing_behind(
    run_up: RunUp, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    up = await run_up(*up_args(tmp_path))
    await up.wait_line(r"embedded Redis-compatible server \(Valkey\) at redis://")
    await up.wait_line(r"^up +\| api ready$", UP_TIMEOUT_S)
    base = await up.api_url()
    await up.wait_line(r"^up +\| worker-2 ready$", UP_TIMEOUT_S)
    await up.wait_line(r"^up +\| worker-1 ready$", UP_TIMEOUT_S)

    answer = await generate(client, base, "hello from up")
    answer.assert_exact("hello from up")

    children = descendants(up.proc.pid)
    names = list(command_lines(children).values())
    assert any("valkey-server" in n for n in names), names
    assert sum(n.endswith(" worker") for n in names) == 2, names
    assert sum(n.endswith(" api") for n in names) == 1, names

    assert await up.terminate(UP_TIMEOUT_S) == 0, up.output()
    assert not alive(children), command_lines(children)
    assert up.matching(r"all processes stopped") and up.matching(r"embedded Redis stopped")
    assert not list((tmp_path / "tmp").glob(f"{BATCH_DIR_PREFIX}*"))
    assert (tmp_path / "data" / "redis").is_dir()  # the embedded server's data went there


async def test_up_restarts_a_worker_killed_with_sigkill(
    run_up: RunUp, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    up = await run_up(*up_args(tmp_path))
    for name in ("api", "worker-1", "worker-2"):
        await up.wait_line(rf"^up +\| {name} ready$", UP_TIMEOUT_S)
    base = await up.api_url()
    victim = worker_process(up, "worker-1")

    victim.send_signal(signal.SIGKILL)

    restart = await up.wait_line(r"!! worker-1 exited with status -9; restart", UP_TIMEOUT_S)
    # the new worker's "ready" line, after the restart (the victim's own may never have been
    # written: INFO lines are written within 0.1 s, logs.py, and a SIGKILL loses the rest)
    after = up.lines.index(restart)
    await eventually(
        lambda: any(
            re.search(r"^worker-1 +\| .*worker worker-1 ready", line) for line in up.lines[after:]
        ),
        UP_TIMEOUT_S,
        "the restarted worker-1 to be ready",
    )
    await eventually(lambda: worker_process(up, "worker-1").pid != victim.pid, 5, "a new worker")
    answers = [await generate(client, base, f"after the restart {i}") for i in range(3)]
    for i, answer in enumerate(answers):
        answer.assert_exact(f"after the restart {i}")
    children = descendants(up.proc.pid)
    assert await up.terminate(UP_TIMEOUT_S) == 0, up.output()
    assert not alive(children)


async def test_up_restarts_a_killed_workers_tasks_within_3_s(
    run_up: RunUp,
    client: httpx.AsyncClient,
    tmp_path: Path,
    redis: Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    """With up's defaults, 8 tasks of 2.5 s on 2 workers: the tasks of the worker killed
    mid-batch start again within 3 s of the kill, on the other worker or on the killed one's
    restart under its id (times from the START of each new attempt, attempt_ms)."""
    up = await run_up(*up_args(tmp_path, "--redis-url", redis_url), LLMB_KEY_PREFIX=key_prefix)
    for name in ("api", "worker-1", "worker-2"):
        await up.wait_line(rf"^up +\| {name} ready$", UP_TIMEOUT_S)
    keys = Keys(key_prefix)
    bodies = [words(10, f"r{i}w") for i in range(8)]
    base = await up.api_url()
    answers = [
        asyncio.create_task(generate(client, base, f"@mock ttft_ms=250 itl_ms=250\n{body}"))
        for body in bodies
    ]

    async def running() -> dict[str, str]:
        """Task id -> worker of the tasks running and streaming, once all 8 have started."""
        ids = await redis.keys(f"{key_prefix}:task:*")
        fields = [await redis.hmget(k, "worker", "state", "tokens") for k in ids]
        if len(ids) < 8 or not all(worker for worker, _, _ in fields):
            return {}
        return {
            key.decode().rsplit(":", 1)[1]: worker.decode()
            for key, (worker, state, tokens) in zip(ids, fields, strict=True)
            if state == b"running" and 0 < int(tokens) < 9
        }

    await eventually(running, 15, "8 tasks to start")
    owners = await running()
    victim_id = next(iter(owners.values()))
    victims = {task for task, worker in owners.items() if worker == victim_id}
    killed_ms = now_ms()
    worker_process(up, victim_id).send_signal(signal.SIGKILL)
    streams = await asyncio.gather(*answers)

    restarts_ms = []
    for stream, body in zip(streams, bodies, strict=True):
        done = stream.assert_exact(body)
        assert (done["attempt"] > 1) == (stream.task_id in victims), (done, victims)
        if stream.task_id in victims:
            started = await redis.hget(keys.task(stream.task_id), "attempt_ms")
            restarts_ms.append(int(started or 0) - killed_ms)
    print(f"\nMEASURED up_restart_after_sigkill_ms={max(restarts_ms)}")
    assert all(0 < ms < 3000 for ms in restarts_ms), restarts_ms
    assert await up.terminate(UP_TIMEOUT_S) == 0, up.output()


async def test_up_with_a_redis_url_starts_no_embedded_server(
    run_up: RunUp,
    client: httpx.AsyncClient,
    tmp_path: Path,
    redis: Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    up = await run_up(*up_args(tmp_path, "--redis-url", redis_url), LLMB_KEY_PREFIX=key_prefix)
    await up.wait_line(rf"using Redis at {redis_url}")
    await up.wait_line(r"^up +\| api ready$", UP_TIMEOUT_S)

    answer = await generate(client, await up.api_url(), "on the session Redis")
    answer.assert_exact("on the session Redis")

    assert not up.matching(r"embedded|Valkey")
    names = list(command_lines(descendants(up.proc.pid)).values())
    assert not any("valkey" in n for n in names), names
    assert not (tmp_path / "data").exists()
    assert await redis.exists(f"{key_prefix}:task:{answer.task_id}")  # it used that server
    assert await up.terminate(UP_TIMEOUT_S) == 0, up.output()
