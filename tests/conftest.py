"""Shared fixtures: a real Redis server (LLMB_TEST_REDIS_URL, else an embedded Valkey), a clean
key prefix per test, and helpers that wait on conditions instead of sleeping."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis


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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of this test's own, which the test may stop and restart."""
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
