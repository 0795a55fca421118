"""The stack of a chaos soak and the faults it suffers: two API replicas, the workers, and a
Redis of its own with AOF on, all supervised (a killed process is started again) by the local
stack of `llm-batcher bench`; and the probes that tell what was left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_batcher.bench.stack import LocalStack
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.local.supervisor import Supervised
from llm_batcher.protocol.keys import Keys
from llm_batcher.worker.child import BATCH_DIR_PREFIX

POLL_S = 0.1
TASK_KEY_PATTERNS = ("task:*", "result:*", "idem:*")  # what one request leaves in Redis
KEY_PREFIX = "llmb"  # the default LLMB_KEY_PREFIX, which the soak's stack keeps
MEMORY_FIGURES = ("used_memory", "used_memory_dataset", "used_memory_overhead",
                  "used_memory_scripts")  # fmt: skip


async def wait_for(
    condition: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str
) -> None:
    """Wait until ``condition`` holds, checking every POLL_S; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


@dataclass
class ChaosStack:
    local: LocalStack
    batch_root: Path
    admin: Redis
    http: httpx.AsyncClient
    mocks_seen: set[psutil.Process] = field(default_factory=set)

    @property
    def redis(self) -> EmbeddedRedis:
        assert self.local.redis is not None
        return self.local.redis

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.local.api_ports]

    # --- is it whole? -------------------------------------------------------------------------

    async def wait_whole(self, timeout_s: float) -> None:
        """Until every process answers its health check and every API says Redis is there."""
        await wait_for(self._whole, timeout_s, "the stack to be whole again")

    async def _whole(self) -> bool:
        if not all(c.ready.is_set() for c in self.local.children):
            return False
        for url in self.urls:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await self.http.get(f"{url}/readyz", timeout=2)).status_code == 200:
                    continue
            return False
        return True

    async def api_metrics(self, name: str) -> list[float]:
        """The value of the unlabelled metric ``name`` on every API replica."""
        values = []
        for url in self.urls:
            text = (await self.http.get(f"{url}/metrics", timeout=5)).text
            found = [s.value for f in text_string_to_metric_families(text)
                     for s in f.samples if s.name == name and not s.labels]  # fmt: skip
            values.append(found[0] if found else float("nan"))
        return values

    # --- faults -------------------------------------------------------------------------------

    def busy_worker(self) -> Supervised | None:
        """A worker running a batch now (it has a batch folder), if any: of those, the one
        restarted least often, so that the kills go round."""
        busy = {p.name.removeprefix(BATCH_DIR_PREFIX).split("-")[0] for p in self.batch_dirs()}
        running = [w for w in self.local.workers if w.proc and str(w.proc.pid) in busy]
        return min(running, key=lambda w: w.restarts, default=None)

    async def kill(self, child: Supervised) -> None:
        """SIGKILL a process and its process group (an LLM child has a session of its own and
        outlives it, as after a real crash), then wait until its supervisor started it again."""
        assert child.proc is not None
        old = child.proc.pid
        self.note_mocks(old)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old, signal.SIGKILL)
        await wait_for(
            lambda: child.proc is not None and child.proc.pid != old and child.ready.is_set(),
            60, f"{child.spec.name} to be started again",
        )  # fmt: skip

    async def restart_redis(self) -> None:
        """Stop Redis (SIGTERM: it writes the rest of its AOF) and start it on the same port."""
        await asyncio.to_thread(self.redis.stop)
        await asyncio.to_thread(self.redis.start)

    async def freeze_redis(self, seconds: float) -> None:
        """SIGSTOP Redis, wait, SIGCONT it (always)."""
        assert self.redis.process is not None
        pid = self.redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def ending_of(self, task_id: str, timeout_s: float) -> str | None:
        """How a task ended ("done" or its error code), read from its hash; None if not seen
        ending within ``timeout_s`` (Redis being away in the meantime is waited out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RedisError, OSError):
                key = Keys(KEY_PREFIX).task(task_id)
                state, code = await self.admin.hmget(key, "state", "code")
                if state in ("done", "error"):  # the admin client decodes its answers
                    return "done" if state == "done" else str(code)
            await asyncio.sleep(POLL_S * 2)
        return None

    # --- what is left behind ------------------------------------------------------------------

    def batch_dirs(self) -> list[Path]:
        return sorted(self.batch_root.glob(f"{BATCH_DIR_PREFIX}*"))

    def note_mocks(self, pid: int) -> list[psutil.Process]:
        """The LLM children below process ``pid``, remembered to be checked gone at the end."""
        found = []
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "llm-mock" in " ".join(proc.cmdline()):
                        found.append(proc)
        self.mocks_seen.update(found)
        return found

    def worker_mocks(self) -> dict[str, int]:
        """LLM children of each worker now (an idle worker keeps one spare)."""
        return {w.spec.name: len(self.note_mocks(w.proc.pid))
                for w in self.local.workers if w.proc is not None}  # fmt: skip

    def mocks_alive(self) -> list[str]:
        alive = []
        for proc in self.mocks_seen:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"pid {proc.pid}")
        return alive

    async def task_keys(self) -> int:
        """Keys that belong to one request (task hash, result stream, idempotency key)."""
        count = 0
        for pattern in TASK_KEY_PATTERNS:
            async for _ in self.admin.scan_iter(f"{KEY_PREFIX}:{pattern}", count=1000):
                count += 1
        return count

    async def memory(self) -> dict[str, int]:
        """Redis's memory figures (INFO memory) and the bytes of each key there is."""
        info = await self.admin.info("memory")
        figures = {name: int(info[name]) for name in MEMORY_FIGURES}
        async for key in self.admin.scan_iter(count=1000):
            figures[f"key {key}"] = int(await self.admin.memory_usage(key) or 0)
        return figures
