"""The operator side of the consumer group: who holds what, and handing a gone worker's tasks on.

A worker's consumer name is its worker id (LLMB_WORKER_ID), which the chart sets to the pod's
name: consumer == pod name. Redis remembers a consumer until XGROUP DELCONSUMER, so autoscaled
workers would leave one behind each; and the tasks a dead worker held wait for its lease to lapse
(claims.py) unless somebody hands them on. Both are done here, atomically, by one script.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import RELEASED_CONSUMER, WORKER_GROUP, Keys
from llm_batcher.protocol.scripts import Script, source

_MOVE_AT_ONCE = 100  # entries per XCLAIM in release_consumer.lua


async def release_consumer(redis: Redis, keys: Keys, consumer: str) -> int:
    """Hand a gone worker's tasks to the group at once, then remove the worker: its consumer, its
    live and idle marks and its read turn. Returns how many tasks it held.

    The tasks go to RELEASED_CONSUMER marked idle since the epoch, so the next takeover of any
    live worker (XAUTOCLAIM, claims.Claims.reclaim_expired) takes them without waiting for the
    lease. Fencing is unchanged: the taker's START gives a new attempt number, so a worker that
    were still running one (a pod force-deleted on a lost node) can no longer write its answer.
    """
    if consumer == RELEASED_CONSUMER:
        raise ValueError(f"{RELEASED_CONSUMER} is not a worker")
    script = redis.register_script(source(Script.RELEASE_CONSUMER))
    moved = await script(
        keys=[keys.tasks, keys.workers, keys.idle, keys.reader],
        args=[consumer, RELEASED_CONSUMER, _MOVE_AT_ONCE],
    )
    return int(moved)


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
