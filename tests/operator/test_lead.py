"""One acting operator replica: the Redis lock, and the periodic loops that act only under it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kopf
import pytest
from redis.asyncio import Redis

from llm_batcher.operator.lead import give_up_lock, hold_lock
from llm_batcher.operator.service import Operator
from llm_batcher.protocol.consumers import consumer_holdings
from llm_batcher.protocol.keys import WORKER_GROUP, Keys
from llm_batcher.settings import OperatorSettings
from tests.support.results import make_queue
from tests.support.waiting import eventually


async def test_the_lock_has_one_holder_until_given_up_or_expired(
    redis: Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    assert await hold_lock(redis, keys, "a", 10_000)
    assert await hold_lock(redis, keys, "a", 10_000)  # renewed
    assert not await hold_lock(redis, keys, "b", 10_000)
    assert 0 < await redis.pttl(keys.operator) <= 10_000
    await give_up_lock(redis, keys, "b")  # not b's to give up
    assert not await hold_lock(redis, keys, "b", 10_000)
    await give_up_lock(redis, keys, "a")
    assert await hold_lock(redis, keys, "b", 10_000)
    await redis.delete(keys.operator)  # as when b's TTL runs out
    assert await hold_lock(redis, keys, "a", 10_000)


@pytest.fixture
async def replicas(redis: Redis, key_prefix: str) -> AsyncIterator[tuple[Operator, Operator]]:
    settings = OperatorSettings(
        namespace="llmb", key_prefix=key_prefix, sweep_s=0.05, lock_ttl_ms=1000
    )
    first, second = Operator(settings, redis, "op-1"), Operator(settings, redis, "op-2")
    try:
        yield first, second
    finally:
        await first.stop_loops()
        await second.stop_loops()


async def test_only_the_replica_holding_the_lock_sweeps(
    replicas: tuple[Operator, Operator], redis: Redis, key_prefix: str
) -> None:
    first, second = replicas
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    first.start_loops(kopf.OperatorSettings())
    await eventually(lambda: first.lead.acting, 5, "the first replica to act")
    second.start_loops(kopf.OperatorSettings())
    await redis.xgroup_createconsumer(queue.keys.tasks, WORKER_GROUP, "old-pod")
    await eventually(
        lambda: _gone(redis, queue.keys, "old-pod"), 5, "the sweep to remove the stale consumer"
    )
    assert not second.lead.acting

    await first.stop_loops()  # gives the lock up: the other replica acts at its next renewal
    await first.stop_loops()  # safe twice
    assert not first.lead.acting
    await eventually(lambda: second.lead.acting, 5, "the second replica to take over")


async def _gone(redis: Redis, keys: Keys, consumer: str) -> bool:
    return consumer not in await consumer_holdings(redis, keys)
