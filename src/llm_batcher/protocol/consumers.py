"""The operator side of the consumer group: who holds what, and handing a gone worker's tasks on.

A worker's consumer name is its worker id (LLMB_WORKER_ID), which the chart sets to the pod's
name: consumer == pod name. Redis remembers a consumer until XGROUP DELCONSUMER, so autoscaled
workers would leave one behind each; and the tasks a dead worker held wait for its heartbeat to
lapse (claims.py) unless somebody hands them on. Both are done by the workers' own takeover
(claims.Claims.take_over_dead, one script), naming the gone worker.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_batcher.protocol.claims import Claims
from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import RELEASED_CONSUMER, WORKER_GROUP, Keys

_MOVE_AT_ONCE = 100  # entries per round of the takeover script
_MAX_ROUNDS = 1000  # a consumer never holds more than the queue: 100,000 entries
# Idle time the handed-on entries get: far above any lease, so that the next reclaim of any live
# worker (XAUTOCLAIM with the lease as min-idle, claims.Claims.reclaim_expired) takes them at once.
_HANDED_ON_IDLE_MS = 365 * 24 * 3600 * 1000


async def release_consumer(claims: Claims, consumer: str) -> int:
    """Hand a gone worker's tasks to the group at once, then forget the worker: its consumer, its
    heartbeat, its live and idle marks and its read turn. Returns how many tasks it held.

    The entries move first, to RELEASED_CONSUMER, and the consumer goes only once it holds
    nothing (deleting it first would drop entries that are then never delivered again). Fencing
    is unchanged: the taker's START gives a new attempt number, so a worker still running one (a
    pod force-deleted on a lost node) can no longer write its answer.
    """
    if consumer == RELEASED_CONSUMER:
        raise ValueError(f"{RELEASED_CONSUMER} is not a worker")
    moved = 0
    for _ in range(_MAX_ROUNDS):
        taken = await claims.take_over_dead(
            RELEASED_CONSUMER,
            _MOVE_AT_ONCE,
            silence_ms=0,
            workers=[consumer],
            idle_ms=_HANDED_ON_IDLE_MS,
        )
        moved += len(taken.claims)
        if consumer in taken.workers or not taken.claims:
            break
    await claims.end_read_turn(consumer)
    return moved


async def consumer_holdings(redis: Redis, keys: Keys) -> dict[str, int]:
    """Every consumer of the group with the number of tasks it holds ({} without a group)."""
    try:
        rows: Any = await redis.xinfo_consumers(keys.tasks, WORKER_GROUP)
    except ResponseError as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc):
            return {}
        raise
    return {reply_text(row["name"]): int(row["pending"]) for row in rows}


async def heartbeats(redis: Redis, keys: Keys) -> dict[str, int]:
    """Worker id -> its last heartbeat (ms since the epoch), from the live-worker set."""
    rows: Any = await redis.zrange(keys.workers, 0, -1, withscores=True)
    return {reply_text(name): int(score) for name, score in rows}
