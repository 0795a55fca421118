"""Watching the API process while a scenario runs: CPU time, memory, Redis connections, /healthz.

Read from outside, with psutil on the API's pid: the bench must not ask the API to measure itself.
The API's only outgoing connections are to Redis, so its established TCP connections from a port
other than the one it listens on are its Redis connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import TypeVar

import httpx
import psutil

SAMPLE_EVERY_S = 0.5
HEALTHZ_TIMEOUT_S = 5.0


@dataclass
class Peaks:
    """The largest figures seen while sampling; None where the API process cannot be seen."""

    rss_bytes: int | None = None
    redis_connections: int | None = None
    healthz_max_s: float | None = None
    healthz_failures: int = 0

    def add(self, rss: int | None, conns: int | None, healthz_s: float | None) -> None:
        self.rss_bytes = _max(self.rss_bytes, rss)
        self.redis_connections = _max(self.redis_connections, conns)
        self.healthz_max_s = _max(self.healthz_max_s, healthz_s)


N = TypeVar("N", int, float)


def _max(old: N | None, new: N | None) -> N | None:
    if new is None:
        return old
    return new if old is None else max(old, new)


class ApiProcess:
    """The API's process, or nothing when it runs elsewhere (every figure is then None)."""

    def __init__(self, pid: int | None, port: int) -> None:
        self.port = port
        self.proc = psutil.Process(pid) if pid is not None else None

    def cpu_s(self) -> float | None:
        """CPU seconds so far: to the nanosecond from Linux's schedstat where there is one, else
        user + system time from psutil (10 ms ticks: a short run can measure 0)."""
        if self.proc is None:
            return None
        precise = schedstat_cpu_s(self.proc.pid)
        if precise is not None:
            return precise
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int | None:
        return None if self.proc is None else int(self.proc.memory_info().rss)

    def redis_connections(self) -> int | None:
        if self.proc is None:
            return None
        conns = self.proc.net_connections(kind="tcp")
        established = [c for c in conns if c.status == psutil.CONN_ESTABLISHED and c.raddr]
        return sum(1 for c in established if c.laddr.port != self.port)

    def sample(self) -> tuple[int | None, int | None]:
        """(RSS, Redis connections); None for both once the process is gone."""
        try:
            return self.rss_bytes(), self.redis_connections()
        except psutil.Error:
            return None, None


async def healthz_s(client: httpx.AsyncClient, url: str) -> float | None:
    """Seconds /healthz took to answer 200; None when it failed or timed out."""
    start = time.monotonic()
    try:
        response = await client.get(url + "/healthz")
    except httpx.HTTPError:
        return None
    return time.monotonic() - start if response.status_code == 200 else None


async def watch(api: ApiProcess, url: str, peaks: Peaks, stop: asyncio.Event) -> None:
    """Sample until ``stop`` is set (the scenario's deadline bounds it)."""
    async with httpx.AsyncClient(timeout=HEALTHZ_TIMEOUT_S) as client:
        while not stop.is_set():
            rss, conns = await asyncio.to_thread(api.sample)
            answered = await healthz_s(client, url)
            if answered is None:
                peaks.healthz_failures += 1
            peaks.add(rss, conns, answered)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


def schedstat_cpu_s(pid: int) -> float | None:
    """The CPU time of a process's threads in seconds, from /proc/PID/task/*/schedstat (whose
    first field is nanoseconds on a CPU); None where there is no such file."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total_ns = 0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total_ns += int(stat.read().split()[0])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        except (OSError, ValueError, IndexError):
            return None
    return total_ns / 1e9
