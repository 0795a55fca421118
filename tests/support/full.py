"""A Redis server of a test's own with a tiny maxmemory under noeviction, and filling it until it
refuses writes ("OOM command not allowed when used memory > 'maxmemory'"), as a backlog does."""

from __future__ import annotations

import shutil

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from llm_batcher.local.embedded_redis import EmbeddedRedis

MAXMEMORY = 8 * 1024 * 1024
"""Tiny, yet above what an idle API and worker use (about 2 MiB: each client connection's
buffers count), so that the test's work runs until the test fills it."""
FILL_PREFIX = "filler:"


class TinyRedis(EmbeddedRedis):
    """Real Redis (redis-server, when on PATH; else the embedded Valkey) with a tiny maxmemory
    and the noeviction policy: once full, every write that needs memory is refused."""

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        argv = super().argv()
        if binary is not None:
            argv[0] = binary
        return [*argv, "--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"]


async def fill(redis: Redis, value_bytes: int = 64 * 1024, most: int = 1000) -> int:
    """Write filler keys until Redis refuses one for lack of memory; then lower maxmemory below
    what is used, so that Redis stays full whatever the buffers of its clients do (a refused
    write's own argument counted in the memory that refused it). Returns the keys written."""
    value = b"x" * value_bytes
    for i in range(most):
        try:
            await redis.set(f"{FILL_PREFIX}{i}", value)
        except OutOfMemoryError:
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", used - 256 * 1024)
            return i
    raise AssertionError(f"Redis took {most} values of {value_bytes} bytes without refusing one")


async def empty(redis: Redis) -> None:
    """Remove the filler keys and give Redis its maxmemory back: it takes writes again."""
    keys = [k async for k in redis.scan_iter(match=f"{FILL_PREFIX}*", count=1000)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start : start + 500])
    await redis.config_set("maxmemory", MAXMEMORY)
