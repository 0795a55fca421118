"""The system under test: a local stack as `llm-batcher up` runs it, or one already running.

A local stack is an embedded Valkey (no persistence unless asked), the API (or several, each on a
port of its own) and N workers, each supervised by `llm_batcher.local`, which restarts a child that
dies; their logs go to a file, not to the terminal. Workers can be started after the API, so that a
scenario can open all its streams before any task is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from llm_batcher.listeners import listener, port_of
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.local.supervisor import ChildSpec, Supervised
from llm_batcher.local.up import worker_spec

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StackConfig:
    """What the workers run with; None keeps the setting's default. ``env``: more LLMB_*
    settings for every process of a local stack; ``apis``: API replicas; ``persistent``: Redis
    writes its AOF (appendonly), so that a restart keeps its data."""

    workers: int
    max_batch: int
    window_ms: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    apis: int = 1
    persistent: bool = False


@dataclass
class Stack:
    """Where the API is, and its process when it runs on this machine."""

    host: str
    port: int
    api_pid: int | None
    config: StackConfig
    local: LocalStack | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start_workers(self) -> None:
        """Start the workers of a local stack started without them (nothing for a remote one)."""
        if self.local is not None:
            await self.local.start_workers(self.config)


def remote_stack(url: str, config: StackConfig) -> Stack:
    """A running API; its process is found by its listening port when it runs here."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return Stack(host, port, find_listener(port), config)


def find_listener(port: int) -> int | None:
    """The pid of the process listening on ``port`` on this machine, if it can be seen."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid is not None else None
    except psutil.AccessDenied:
        return None
    return None


@dataclass
class LocalStack:
    data_dir: Path
    log: TextIO
    redis: EmbeddedRedis | None = None
    children: list[Supervised] = field(default_factory=list)  # every one launched
    apis: list[Supervised] = field(default_factory=list)
    workers: list[Supervised] = field(default_factory=list)
    runners: list[asyncio.Task[None]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_ports: list[int] = field(default_factory=list)

    async def start(self, config: StackConfig, with_workers: bool) -> Stack:
        self.redis = EmbeddedRedis(self.data_dir / "redis", appendonly=config.persistent)
        await asyncio.to_thread(self.redis.start)
        self.env = dict(os.environ, LLMB_REDIS_URL=self.redis.url, PYTHONUNBUFFERED="1")
        self.env.update({"LLMB_MAX_BATCH": str(config.max_batch), "LLMB_LOG_LEVEL": "INFO"})
        # Every bench context carries a `@mock` line (its timing and the stamp it measures).
        self.env["LLMB_MOCK_DIRECTIVES"] = "true"
        if config.window_ms is not None:
            self.env["LLMB_WINDOW_MS"] = str(config.window_ms)
        self.env.update(config.env)
        specs = []
        for i in range(1, config.apis + 1):
            # A socket bound here and passed down (listeners.py): no other process can take the
            # port between its choice and the API's start, and a restarted API keeps it.
            sock = listener()
            self.api_ports.append(port_of(sock))
            api_env = dict(self.env, LLMB_LISTEN_FD=str(sock.fileno()))
            url = f"http://127.0.0.1:{port_of(sock)}/healthz"
            name = "api" if config.apis == 1 else f"api-{i}"
            specs.append(ChildSpec(name, [*_CLI, "api"], api_env, url, sockets=(sock,)))
        self.apis = list(await asyncio.gather(*(self._launch(spec) for spec in specs)))
        api = self.apis[0]
        assert api.proc is not None
        stack = Stack("127.0.0.1", self.api_ports[0], api.proc.pid, config, self)
        if with_workers:
            await self.start_workers(config)
        return stack

    async def start_workers(self, config: StackConfig) -> None:
        numbers = range(len(self.workers) + 1, config.workers + 1)
        specs = [worker_spec(_CLI, self.env, i) for i in numbers]
        self.workers += await asyncio.gather(*(self._launch(spec) for spec in specs))

    async def _launch(self, spec: ChildSpec) -> Supervised:
        child = Supervised(spec, self._say, out=self.log)
        self.children.append(child)
        self.runners.append(asyncio.create_task(child.run()))
        try:
            await asyncio.wait_for(child.ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            limit = READY_TIMEOUT_S
            raise RuntimeError(f"{spec.name} was not ready within {limit:.0f} s") from None
        return child

    def _say(self, line: str) -> None:
        self.log.write(f"{'bench':<10} | {line}\n")

    async def stop(self) -> None:
        """APIs first (streams end), then workers, then Redis."""
        apis = [child for child in self.children if child.spec.argv[-1] == "api"]
        await asyncio.gather(*(child.stop() for child in apis))
        await asyncio.gather(*(child.stop() for child in self.children if child not in apis))
        await asyncio.gather(*self.runners)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)


_CLI = [sys.executable, "-m", "llm_batcher.cli"]


@contextlib.asynccontextmanager
async def local_stack(
    config: StackConfig, data_dir: Path, log: TextIO, with_workers: bool = True
) -> AsyncIterator[Stack]:
    """A fresh local stack for the duration of the block."""
    local = LocalStack(data_dir, log)
    try:
        yield await local.start(config, with_workers)
    finally:
        await local.stop()
