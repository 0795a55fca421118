"""Shared fixtures: a real Redis server (LLMB_TEST_REDIS_URL, else an embedded Valkey), a clean
key prefix per test, an HTTP client, and the real processes of a test (helpers in tests/support)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from tests.support.full import TinyRedis
from tests.support.processes import Stack, stack_on
from tests.support.sentinel import SentinelSet
from tests.support.sse import STREAM_TIMEOUT_S
from tests.support.tools import check_tools
from tests.support.up import Up, up_env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the docker tests out unless -m names them: they need Docker and build images."""
    if "docker" in (config.option.markexpr or ""):
        return
    docker = [item for item in items if item.get_closest_marker("docker")]
    if docker:
        config.hook.pytest_deselected(items=docker)
        items[:] = [item for item in items if not item.get_closest_marker("docker")]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked requires_tool: skipped without the program, failed under CI's
    LLMB_REQUIRE_TOOLS=1 (tests/support/tools.py)."""
    check_tools(item)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the Redis server the tests use."""
    url = os.environ.get("LLMB_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses."""
    return f"llmbtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    """A client on the test server; the test's keys are deleted afterwards."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


Server = TypeVar("Server", bound=EmbeddedRedis)


def _served(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of this test's own, which the test may stop and restart."""
    yield from _served(EmbeddedRedis(tmp_path / "valkey", appendonly=False))


@pytest.fixture
def tiny_redis(tmp_path: Path) -> Iterator[TinyRedis]:
    """A server of this test's own with a tiny maxmemory under noeviction (tests/support/full.py),
    stopped after the test."""
    yield from _served(TinyRedis(tmp_path / "tiny-redis", appendonly=False))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with room for many concurrent streams and no proxy from the environment."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    timeout = httpx.Timeout(10.0, read=STREAM_TIMEOUT_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as http:
        yield http


@pytest.fixture
async def stack(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Start APIs and workers with stack.api() / stack.worker() on the session Redis under this
    test's key prefix (its keys removed after); all are stopped afterwards."""
    with stack_on(redis_url, key_prefix, tmp_path) as processes:
        yield processes


@pytest.fixture
async def own_stack(
    own_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Processes on a Redis server of this test's own, which the test may stop and restart."""
    with stack_on(own_redis.url, key_prefix, tmp_path) as processes:
        yield processes


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


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A primary, a replica and three Sentinels of this test's own (tests/support/sentinel.py),
    ready for a failover; all stopped afterwards."""
    servers = SentinelSet(tmp_path / "sentinel")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        print(servers.logs())  # shown by pytest only when the test failed
