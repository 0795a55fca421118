"""Clients made through Redis Sentinel (protocol/connection.py) against real Sentinel processes:
the pool stays bounded, and after a failover every kind of connection reaches the new master
(commands, Lua scripts the new master never saw, the worker's blocking reader, pub/sub)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from redis.asyncio import Redis, SSLConnection
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

from llm_batcher.protocol.connection import (
    REDIS_UNAVAILABLE,
    SentinelBlockingPool,
    _MasterConnection,
    make_redis,
)
from llm_batcher.protocol.scripts import Script, source
from llm_batcher.settings import CommonSettings
from tests.support.results import make_queue, submit
from tests.support.sentinel import DATA_PASSWORD, MASTER, SENTINEL_PASSWORD, SentinelSet
from tests.support.waiting import eventually

T = TypeVar("T")


@pytest.fixture
async def client(sentinel_set: SentinelSet) -> AsyncIterator[Redis]:
    redis = make_redis(
        CommonSettings(**sentinel_set.settings()), max_connections=3, socket_timeout_s=5
    )
    try:
        yield redis
    finally:
        await redis.aclose()


async def once_back(call: Callable[[], Awaitable[T]], timeout_s: float = 20) -> T:
    """The result of ``call`` once Redis answers it again (bounded)."""
    results: list[T] = []

    async def answered() -> bool:
        try:
            results.append(await call())
        except REDIS_UNAVAILABLE:
            return False
        return True

    await eventually(answered, timeout_s, "Redis to answer again")
    return results[0]


async def test_the_pool_is_bounded_and_reaches_the_master(
    client: Redis, sentinel_set: SentinelSet
) -> None:
    pool = client.connection_pool
    assert isinstance(pool, SentinelBlockingPool)
    assert await client.set("k", "v")
    assert (await client.info("server"))["tcp_port"] == sentinel_set.primary.port
    # 3 connections at most: a 4th blocking call waits for one instead of failing
    blocked = [asyncio.ensure_future(client.blpop(["nothing"], timeout=0)) for _ in range(3)]
    await eventually(lambda: len(pool._in_use_connections) == 3, 5, "3 blocked calls")
    fourth = asyncio.ensure_future(client.get("k"))
    # a negative needs a window: an unbounded pool answers within a millisecond
    await asyncio.wait({fourth}, timeout=0.3)
    assert not fourth.done()
    for call in blocked:
        call.cancel()
    assert await asyncio.wait_for(fourth, 5) == b"v"


async def test_every_connection_follows_a_failover(
    client: Redis, sentinel_set: SentinelSet, key_prefix: str
) -> None:
    queue = make_queue(client, key_prefix)
    await queue.claims.ensure_group()
    before = await submit(queue, "before the failover")  # loads the scripts on the primary
    assert [c.task_id for c in await queue.claims.read_new("c1", 10, 100)] == [before]
    pubsub = client.pubsub()
    await pubsub.subscribe("announcements")
    assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"  # type: ignore[index]
    await eventually(_replicated(sentinel_set), 5, "the replica to catch up")
    submit_sha = hashlib.sha1(source(Script.SUBMIT).encode()).hexdigest()
    with sentinel_set.replica.client(DATA_PASSWORD) as replica:
        assert replica.script_exists(submit_sha) == [False]  # scripts are not replicated

    sentinel_set.primary.kill()  # SIGKILL, reaped: its sockets are closed
    with pytest.raises(RedisConnectionError):  # the old master's connections fail...
        await queue.claims.read_new("c1", 10, 100)
    await asyncio.to_thread(sentinel_set.wait_failover)

    # ... and connect again to the new master, where the group and the first task are
    assert (await once_back(lambda: client.info("server")))["tcp_port"] == sentinel_set.replica.port
    assert await queue.results.task_exists(before)
    after = await once_back(lambda: submit(queue, "after the failover"))  # NOSCRIPT: reloaded
    claims = await once_back(lambda: queue.claims.read_new("c1", 10, 200))
    assert [c.task_id for c in claims] == [after]
    await _published_after_failover_arrives(client, pubsub)
    await pubsub.aclose()


async def _published_after_failover_arrives(client: Redis, pubsub: PubSub) -> None:
    """redis-py re-subscribes on reconnect: a message published now reaches the subscriber."""
    received: list[bytes] = []

    async def published_and_read() -> bool:
        try:
            await client.publish("announcements", "hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        except REDIS_UNAVAILABLE:
            return False
        if message is not None and message["type"] == "message":
            received.append(message["data"])
        return bool(received)

    await eventually(published_and_read, 20, "a message after the failover")
    assert received[0] == b"hello"


def _replicated(sentinel_set: SentinelSet) -> Callable[[], bool]:
    def check() -> bool:
        with sentinel_set.primary.client(DATA_PASSWORD) as primary:
            offset = primary.info("replication")["master_repl_offset"]
        with sentinel_set.replica.client(DATA_PASSWORD) as replica:
            return bool(replica.info("replication")["slave_repl_offset"] >= offset)

    return check


@pytest.mark.parametrize("tls", [False, True])
async def test_the_url_gives_database_user_password_and_tls_not_the_address(tls: bool) -> None:
    scheme, query = ("rediss", "?ssl_cert_reqs=none") if tls else ("redis", "")
    settings = CommonSettings(
        redis_url=f"{scheme}://app:data-pw@ignored:1/3{query}",
        redis_sentinels="s0:26379,s1:26380",
        redis_sentinel_master="m",
        redis_sentinel_password="sentinel-pw",
    )
    redis = make_redis(settings, max_connections=2, socket_timeout_s=5)
    pool = redis.connection_pool
    assert isinstance(pool, SentinelBlockingPool)
    master = pool.connection_kwargs
    assert (master["db"], master["username"], master["password"]) == (3, "app", "data-pw")
    assert "host" not in master and "port" not in master  # asked of the Sentinels instead
    assert issubclass(pool.connection_class, SSLConnection) == tls
    sentinel_pools = [s.connection_pool for s in pool.sentinel_manager.sentinels]
    assert [p.connection_kwargs["port"] for p in sentinel_pools] == [26379, 26380]
    for sentinel_pool in sentinel_pools:
        assert sentinel_pool.connection_kwargs["password"] == "sentinel-pw"  # not the data one
        assert issubclass(sentinel_pool.connection_class, SSLConnection) == tls
    if tls:
        assert master["ssl_cert_reqs"] == sentinel_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    await redis.aclose()


async def test_when_the_old_master_lives_on_every_connection_leaves_it(
    client: Redis, sentinel_set: SentinelSet, key_prefix: str
) -> None:
    """A failover whose old master lives on (SENTINEL FAILOVER, or a partition): it stays a
    master, accepting writes, until the Sentinels demote it about 10 s later. The pool asks the
    Sentinels every MASTER_CHECK_S, so every connection leaves it well before, the blocking
    reader included, and no write goes to it."""
    queue = make_queue(client, key_prefix)
    await queue.claims.ensure_group()
    await queue.claims.read_new("c1", 10, 50)  # the blocking reader holds a connection
    with sentinel_set.sentinels[0].client(SENTINEL_PASSWORD) as sentinel:
        assert sentinel.sentinel_failover(MASTER)
    await asyncio.to_thread(sentinel_set.wait_failover)

    async def on_new_master() -> bool:
        port = (await once_back(lambda: client.info("server")))["tcp_port"]
        return bool(port == sentinel_set.replica.port)

    await eventually(on_new_master, 5, "commands to reach the new master")
    task_id = await once_back(lambda: submit(queue, "after a manual failover"))
    claims = await once_back(lambda: queue.claims.read_new("c1", 10, 200))
    assert [c.task_id for c in claims] == [task_id]
    with sentinel_set.primary.client(DATA_PASSWORD) as old_master:
        assert old_master.info("replication")["role"] == "master"  # not demoted yet
        assert not old_master.exists(queue.keys.task(task_id))


class _PoolOfNoSentinel:
    """What a master connection asks of its pool when it connects to a given address."""

    check_connection = False


async def test_a_send_cut_by_the_pools_disconnect_is_a_dropped_connection(redis_url: str) -> None:
    # When the Sentinels name a new master, the pool disconnects every connection, those in use
    # too. One doing so at the await before its write (here: the health check) used to fail its
    # caller with AttributeError ('NoneType' object has no attribute 'writelines'), which no
    # caller retries; seen in CI in the failover test above, on a connection's own handshake.
    class CutWhileChecking(_MasterConnection):
        async def check_health(self) -> None:
            self._writer = None  # what disconnect(), run by the pool's master check, leaves

    url = parse_url(redis_url)
    connection = CutWhileChecking(connection_pool=_PoolOfNoSentinel(), password=url.get("password"))
    try:
        await connection.connect_to((url.get("host", "127.0.0.1"), url.get("port", 6379)))
        with pytest.raises(RedisConnectionError, match="new master"):
            await connection.send_command("PING")
    finally:
        await connection.disconnect()
