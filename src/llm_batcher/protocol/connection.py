"""Building Redis clients from settings (never at import time), and what counts as an outage."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_batcher.settings import CommonSettings

REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
"""Errors that mean Redis cannot be reached right now (down, restarting, unreachable, or not
answering within a timeout), as opposed to a Redis that answered with an error."""


def make_redis(
    settings: CommonSettings,
    *,
    max_connections: int,
    socket_timeout_s: float | None,
    pool_timeout_s: float | None = None,
) -> Redis:
    """A client over a bounded pool: callers wait for a free connection instead of opening more."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        password=settings.redis_password,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_connect_timeout=min(2.0, socket_timeout_s or 2.0),
        socket_timeout=socket_timeout_s,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


def reply_text(value: bytes | str) -> str:
    """A Redis reply as text (clients here do not decode replies: answers are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else value
