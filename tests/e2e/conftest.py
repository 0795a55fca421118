"""Fixtures of the end-to-end suites (helpers in tests/e2e/support.py): processes that are
always stopped, and an HTTP client for many concurrent streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from tests.e2e.support import STREAM_TIMEOUT_S, Cluster, Up, up_env


@pytest.fixture
async def cluster(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Processes on the session Redis under this test's key prefix (its keys removed after)."""
    system = Cluster(redis_url, key_prefix, tmp_path)
    try:
        yield system
    finally:
        system.close()
        print(system.logs())  # shown by pytest only when the test failed


@pytest.fixture
async def own_cluster(own_redis: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Processes on a Redis server of this test's own, which the test may restart."""
    system = Cluster(own_redis.url, "llmb-e2e", tmp_path)
    try:
        yield system
    finally:
        system.close()
        print(system.logs())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with room for many concurrent streams and no proxy from the environment."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    timeout = httpx.Timeout(10.0, read=STREAM_TIMEOUT_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as http:
        yield http


@pytest.fixture
async def run_up(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Up]]]:
    """Start `llm-batcher up ARGS` in a tmp folder (env: see up_env); always stopped after."""
    started: list[Up] = []

    async def start(*args: str, **env: str) -> Up:
        up = await Up.start(list(args), tmp_path, up_env(tmp_path, **env))
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            await up.close()
            print(up.output())  # shown by pytest only when the test failed
