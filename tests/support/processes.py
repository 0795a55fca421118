"""The real processes of a test: `llm-batcher api` and `worker` on the test's Redis and key
prefix, started the way `llm-batcher up` starts them (own session, a listening socket bound here
on a free port and passed down, LLMB_* settings), always stopped; and looks at the processes below
them (the worker's `llm-mock`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from llm_batcher.listeners import listener, port_of
from llm_batcher.worker.child import BATCH_DIR_PREFIX
from tests.support.waiting import eventually

BIN = Path(sys.executable).parent


class Proc:
    """A child process of the test with its log in a file."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        pass_fds: list[int] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds or [],
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
        """SIGTERM, wait, else kill; then close the log."""
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
    env.setdefault("LLMB_MOCK_DIRECTIVES", "true")  # tests steer the mock; a test may say off
    return env


def spawn(command: str, redis_url: str, prefix: str, log_path: Path, **settings: object) -> Proc:
    """`llm-batcher <command>` with these settings. A setting whose value is a listening socket
    (listeners.py: `health_fd=listener()`) passes that socket down; this process's copy is then
    closed, so the port is the child's alone, as if it had bound it itself."""
    sockets = [value for value in settings.values() if isinstance(value, socket.socket)]
    fds = {k: v.fileno() for k, v in settings.items() if isinstance(v, socket.socket)}
    env = base_env(redis_url, prefix, **(settings | fds))
    try:
        argv = [str(BIN / "llm-batcher"), command]
        return Proc(argv, env, log_path, pass_fds=list(fds.values()))
    finally:
        for sock in sockets:
            sock.close()


async def wait_http(url: str, proc: Proc, timeout_s: float = 20) -> None:
    """Wait until ``url`` answers 200, failing early if the process died."""

    async def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"process exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            async with httpx.AsyncClient(timeout=1, trust_env=False) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(up, timeout_s, f"{url} to answer")


async def wait_live_worker(api: Api, timeout_s: float = 20) -> None:
    """Wait until the API is ready and its /readyz counts at least one live worker."""

    async def live() -> bool:
        if api.proc.popen.poll() is not None:
            raise AssertionError(f"API exited with {api.proc.popen.returncode}:\n{api.proc.log()}")
        try:
            async with httpx.AsyncClient(timeout=1, trust_env=False) as client:
                answer = await client.get(f"{api.url}/readyz")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and (answer.json()["workers"] or 0) > 0

    await eventually(live, timeout_s, f"{api.url}/readyz to count a live worker")


async def _started(proc: Proc, health_url: str) -> None:
    """Wait for the process's /healthz; kill it if it never answers or the wait is cancelled."""
    try:
        await wait_http(health_url, proc)
    except BaseException:
        proc.kill_group()
        proc.stop()
        raise


async def start_worker(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> tuple[Proc, int]:
    """Start `llm-batcher worker`; returns it and its health port once /healthz answers."""
    health = listener()
    port = port_of(health)
    settings.setdefault("worker_id", f"w-{uuid.uuid4().hex[:6]}")
    settings.setdefault("lease_ms", 1500)
    # Tests that form batches with a window want the window they name, every time; the adaptive
    # policy (the default) is tested where a test asks for it.
    settings.setdefault("window_policy", "fixed")
    log_path = log_dir / f"{settings['worker_id']}.log"
    proc = spawn("worker", redis_url, prefix, log_path, health_fd=health, **settings)
    await _started(proc, f"http://127.0.0.1:{port}/healthz")
    return proc, port


async def start_api(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> tuple[Proc, str]:
    """Start `llm-batcher api` on a free port; returns it and its base URL once /healthz answers."""
    sock = listener()
    port = port_of(sock)
    proc = spawn("api", redis_url, prefix, log_dir / f"api-{port}.log", listen_fd=sock, **settings)
    base_url = f"http://127.0.0.1:{port}"
    await _started(proc, f"{base_url}/healthz")
    return proc, base_url


@contextlib.asynccontextmanager
async def running_worker(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> AsyncIterator[tuple[Proc, int]]:
    """A worker process for the duration of the block (stopped, or already gone, after it)."""
    proc, port = await start_worker(redis_url, prefix, log_dir, **settings)
    try:
        yield proc, port
    finally:
        proc.stop()


@dataclass
class Api:
    """An `llm-batcher api` process and its base URL."""

    proc: Proc
    url: str


@dataclass
class Worker:
    """An `llm-batcher worker` process, its health port and its id in Redis."""

    proc: Proc
    port: int
    id: str


@dataclass
class Stack:
    """The APIs and workers of one test on one Redis server and key prefix; stop() ends them."""

    redis_url: str
    prefix: str
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    async def api(self, **settings: object) -> Api:
        """An API process; open streams are closed at once on stop unless the test says so."""
        settings.setdefault("shutdown_grace_s", 0)
        settings.setdefault("log_level", "INFO")  # DEBUG logs every SSE chunk: slow on big answers
        proc, url = await start_api(self.redis_url, self.prefix, self.log_dir, **settings)
        self.procs.append(proc)
        return Api(proc, url)

    async def worker(self, **settings: object) -> Worker:
        """A worker process; its batch folders go to the test's tmp_path."""
        worker_id = str(settings.setdefault("worker_id", f"w-{uuid.uuid4().hex[:6]}"))
        settings.setdefault("drain_s", 0)
        settings.setdefault("tmp_dir", str(self.log_dir))
        proc, port = await start_worker(self.redis_url, self.prefix, self.log_dir, **settings)
        self.procs.append(proc)
        return Worker(proc, port, worker_id)

    async def wait_ready(self, api: Api, timeout_s: float = 20) -> None:
        """Wait until the API's /readyz says Redis is there and a worker is live (a worker does
        not make the API ready: /readyz says how many are live)."""
        await wait_live_worker(api, timeout_s)

    def stop(self) -> None:
        """SIGTERM every process at once, so they shut down side by side; wait for each, killing
        what does not stop. One signal only: a second SIGTERM makes uvicorn skip its lifespan
        shutdown."""
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.popen.poll() is None:
                proc.kill_group()
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in self.procs)


@contextlib.contextmanager
def stack_on(redis_url: str, prefix: str, log_dir: Path) -> Iterator[Stack]:
    """A Stack on this Redis and key prefix whose processes are all stopped after the block;
    their logs are printed then (pytest shows them when the test failed)."""
    processes = Stack(redis_url, prefix, log_dir)
    try:
        yield processes
    finally:
        processes.stop()
        print(processes.logs())


async def start_together(*starts: Coroutine[Any, Any, Any]) -> list[Any]:
    """Start processes concurrently; if one fails, the others are cancelled (and clean up)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(start) for start in starts]
    return [task.result() for task in tasks]


# --- processes below a test's processes ---------------------------------------------------------


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie waiting for its parent counts as gone)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            continue
    return running


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` right now."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_lines(procs: list[psutil.Process]) -> dict[psutil.Process, str]:
    """The command line of each of ``procs`` still alive (one may exit while we look)."""
    lines = {}
    for proc in alive(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            lines[proc] = " ".join(proc.cmdline())
    return lines


def llm_children(pid: int) -> list[psutil.Process]:
    """The live `llm-mock` processes below process ``pid``."""
    return [p for p, line in command_lines(descendants(pid)).items() if "llm-mock" in line]


def batch_dirs(root: Path) -> list[Path]:
    """Per-batch context folders left in ``root``."""
    return sorted(root.glob(f"{BATCH_DIR_PREFIX}*"))
