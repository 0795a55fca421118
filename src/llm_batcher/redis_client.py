"""Building Redis clients from settings (never at import time)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from llm_batcher.settings import CommonSettings


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
