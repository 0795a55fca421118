"""A Redis server of the test's own that requires a password (`server.password`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_batcher.local.embedded_redis import EmbeddedRedis

REDIS_PASSWORD = "hunter2-redis-password-0123456789"


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded server that requires REDIS_PASSWORD."""
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False, password=REDIS_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()
