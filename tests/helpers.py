"""Helpers for tests that start the real processes: wait on conditions, run workers and APIs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import free_port
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, Keys
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry

BIN = Path(sys.executable).parent


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10, what: str = ""
) -> None:
    """Wait until ``condition()`` is true, polling briefly; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


class Proc:
    """A child process of the test with its log in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the process and its process group. An LLM child runs in a session of its own
        and is not killed: like after a real SIGKILL, it exits once it notices its parent gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def wait(self, timeout_s: float = 30) -> int:
        return self.popen.wait(timeout_s)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_group()
        self._log.close()


def base_env(redis_url: str, prefix: str, **settings: object) -> dict[str, str]:
    """Environment for a child process: the test's Redis and prefix, plus LLMB_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")}
    env.update(LLMB_REDIS_URL=redis_url, LLMB_KEY_PREFIX=prefix, LLMB_LOG_LEVEL="DEBUG")
    env.update({f"LLMB_{k.upper()}": str(v) for k, v in settings.items()})
    env.setdefault("LLMB_MOCK_TTFT_MS", "0")
    env.setdefault("LLMB_MOCK_ITL_MS", "0")
    return env


async def start_worker(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> tuple[Proc, int]:
    """Start `llm-batcher worker`; returns it and its health port once /healthz answers."""
    port = free_port()
    settings.setdefault("worker_id", f"w-{uuid.uuid4().hex[:6]}")
    settings.setdefault("lease_ms", 1500)
    env = base_env(redis_url, prefix, health_port=port, **settings)
    proc = Proc([str(BIN / "llm-batcher"), "worker"], env, log_dir / f"{settings['worker_id']}.log")
    await wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, port


async def wait_http(url: str, proc: Proc, timeout_s: float = 20) -> None:
    """Wait until ``url`` answers 200, failing early if the process died."""

    async def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"process exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(up, timeout_s, f"{url} to answer")


def make_queue(redis: Redis, prefix: str, ttl_s: float = 300) -> TaskQueue:
    return TaskQueue.create(redis, Keys(prefix), result_ttl_s=ttl_s)


async def submit(queue: TaskQueue, context: str, timeout_s: float = 60) -> str:
    """Queue a task as the API does; returns its id."""
    task_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    assert await queue.tasks.submit(
        task_id, context, now_ms=now, deadline_ms=now + int(timeout_s * 1000), max_queue=10_000
    )
    return task_id


async def wait_result(queue: TaskQueue, task_id: str, timeout_s: float = 30) -> list[ResultEntry]:
    """Block on the task's result stream until its terminal entry; returns all entries."""
    key = queue.keys.result(task_id)
    last, deadline = "0-0", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await queue.redis.xread({key: last}, block=200)
        for _, entries in reply:
            last = entries[-1][0]
            if last in (TERMINAL_ENTRY_ID, TERMINAL_ENTRY_ID.encode()):
                return await queue.results.after(task_id, -1)
    raise AssertionError(f"task {task_id} did not finish within {timeout_s} s")


def answer(entries: list[ResultEntry]) -> str:
    return "".join(e.text for e in entries if e.kind == "token")


def terminal(entries: list[ResultEntry]) -> ResultEntry:
    assert entries and entries[-1].is_terminal, entries[-3:]
    return entries[-1]


async def start_api(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> tuple[Proc, str]:
    """Start `llm-batcher api` on a free port; returns it and its base URL once /healthz answers."""
    port = free_port()
    env = base_env(redis_url, prefix, port=port, **settings)
    proc = Proc([str(BIN / "llm-batcher"), "api"], env, log_dir / f"api-{port}.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{base_url}/healthz", proc)
    except BaseException:
        proc.kill_group()
        proc.stop()
        raise
    return proc, base_url
