"""Building Redis clients from settings (never at import time), and what counts as an outage.

Every client of every process (API, worker, `stats`) is made here, directly from a URL or through
Redis Sentinel. With Sentinels, a connection asks them for the master's address each time it
connects: after a failover, the connections to the old master fail (ConnectionError, or a
ReadOnlyError turned into one once it is a replica), and their next connect reaches the new master.
What rides on a connection comes back with it: redis-py re-loads a Lua script that answers
NOSCRIPT (the script cache is not replicated), and re-subscribes pub/sub channels on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from llm_batcher.settings import CommonSettings

log = logging.getLogger(__name__)

MASTER_CHECK_S = 1.0
"""How often a process asks the Sentinels whether the master moved (while it uses Redis)."""

REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
"""Errors that mean Redis cannot be reached right now (down, restarting, unreachable, or not
answering within a timeout), as opposed to a Redis that answered with an error."""


class _MasterConnection(SentinelManagedConnection):
    """A connection that asks the Sentinels where the master is whenever it connects again.

    redis-py reconnects a dropped connection on its next command with connect_check_health(),
    to the address it had, which skips SentinelManagedConnection.connect() and its question to
    the Sentinels. Connections taken from the pool are connected through connect(), but one
    held for long (the worker's blocking reader) kept dialing the dead master after a failover.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        try:
            await super().send_packed_command(command, check_health)
        except AttributeError as exc:
            # When the Sentinels name a new master, the pool disconnects every connection, those
            # in use included (SentinelBlockingPool._check_master); a send under way on one of
            # them, a connection's own handshake among them, then finds its writer gone. That
            # is a dropped connection, which callers retry, not a bug of theirs.
            if self._writer is not None:
                raise
            raise RedisConnectionError("the connection was closed for a new master") from exc


class _MasterTlsConnection(_MasterConnection, SSLConnection):
    """The same over TLS (as redis-py's SentinelManagedSSLConnection)."""


class SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections as Sentinels name it, bounded as BlockingConnectionPool is.

    The order of the bases matters. SentinelConnectionPool.__init__ takes its own options and
    gives the connections a reference to the pool (through which they ask the Sentinels where to
    connect), then hands the rest to BlockingConnectionPool.__init__ (max_connections, timeout).
    SentinelConnectionPool overrides neither get_connection nor release, so callers wait for a
    free connection (BlockingConnectionPool's) instead of getting "Too many connections".
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._checked_at = -MASTER_CHECK_S
        self._check: asyncio.Task[None] | None = None

    async def get_connection(self) -> Any:  # type: ignore[override]
        self._check_master_soon()
        return await super().get_connection()  # type: ignore[no-untyped-call]

    def _check_master_soon(self) -> None:
        """Ask the Sentinels, at most every MASTER_CHECK_S and in the background, whether the
        master moved. redis-py asks only when a connection connects; but when the old master
        lives on (a manual failover, a partition), the connections open to it stay usable, and
        the Sentinels demoted it only 10 s later: writes went to it until then, and were lost."""
        now = time.monotonic()
        if now - self._checked_at < MASTER_CHECK_S or self._check is not None:
            return
        self._checked_at = now
        self._check = asyncio.get_running_loop().create_task(self._check_master())

    async def _check_master(self) -> None:
        try:
            known = self.master_address
            address = await self.sentinel_manager.discover_master(self.service_name)
            if known is not None and address != known:
                log.warning("the Sentinels name a new master, %s:%s; reconnecting", *address)
                self.master_address = address
                await self.disconnect(inuse_connections=True)  # in use too: the reader, pub/sub
        except REDIS_UNAVAILABLE as exc:  # no Sentinel answers: the connections will tell
            log.debug("master check skipped: %s", exc)
        finally:
            self._check = None

    async def aclose(self) -> None:
        """Close the pool's connections, and the Sentinel clients, which nothing else owns."""
        if self._check is not None:
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._check
        await super().aclose()
        await self.sentinel_manager.aclose()


def make_redis(
    settings: CommonSettings,
    *,
    max_connections: int,
    socket_timeout_s: float | None,
    pool_timeout_s: float | None = None,
) -> Redis:
    """A client over a bounded pool: callers wait for a free connection instead of opening more.
    Closing the client closes the pool."""
    options: dict[str, Any] = {
        "password": settings.redis_password,
        "max_connections": max_connections,
        "timeout": pool_timeout_s,
        "socket_connect_timeout": min(2.0, socket_timeout_s or 2.0),
        "socket_timeout": socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
        # Off: redis-py checks a connection it takes from the pool (a server that closed it, as
        # on a restart, is seen, and the connection made again) only with these notifications
        # off. With redis-py's default ("auto"), after a Redis restart each connection of the
        # pool failed the next command sent on it: a refused request on the API, an abandoned
        # batch on a worker (found by the chaos soak). They serve Redis Enterprise's planned
        # maintenance, which Redis and Valkey do not announce.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if settings.redis_sentinels:
        return Redis.from_pool(_sentinel_pool(settings, options))
    return Redis.from_pool(BlockingConnectionPool.from_url(settings.redis_url, **options))


def _sentinel_pool(settings: CommonSettings, options: dict[str, Any]) -> SentinelBlockingPool:
    """The pool of the master named by LLMB_REDIS_SENTINEL_MASTER.

    LLMB_REDIS_URL still gives the database, the user and password (the URL's password wins over
    LLMB_REDIS_PASSWORD, as without Sentinels) and TLS: `rediss://` and its `ssl_*` options apply
    to the master and to the Sentinels alike. Its host and port are ignored.
    """
    url_options: dict[str, Any] = dict(parse_url(settings.redis_url))
    for ignored in ("host", "port", "path"):
        url_options.pop(ignored, None)
    tls = url_options.pop("connection_class", None) is SSLConnection
    options = options | url_options
    # Sentinel calls happen while connecting: they get the connect timeout, and a Sentinel that
    # does not answer is skipped for the next one.
    timeout_s = options["socket_connect_timeout"]
    sentinel_options: dict[str, Any] = {
        "password": settings.redis_sentinel_password,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "socket_keepalive": True,
    }
    if tls:
        tls_options = {k: v for k, v in options.items() if k.startswith("ssl_")}
        sentinel_options.update(ssl=True, **tls_options)
    sentinels = Sentinel(settings.sentinel_addresses, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    master = settings.redis_sentinel_master
    connection_class = _MasterTlsConnection if tls else _MasterConnection
    return SentinelBlockingPool(master, sentinels, connection_class=connection_class, **options)


def reply_text(value: bytes | str) -> str:
    """A Redis reply as text (clients here do not decode replies: answers are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else value
