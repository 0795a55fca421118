"""Fixtures of the API tests: real API and worker processes on the test's Redis, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.api.support import Stack


@pytest.fixture
async def stack(
    redis_url: str, key_prefix: str, redis: Redis, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Start APIs and workers with stack.api() / stack.worker(); all are stopped afterwards."""
    processes = Stack(redis_url, key_prefix, tmp_path)
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        yield http
