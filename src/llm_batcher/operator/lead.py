"""One acting operator: a lock in Redis with a TTL (keys.Keys.operator).

Chosen over kopf's peering, which needs a cluster-wide CustomResourceDefinition (KopfPeering)
installed beside the chart and rights on it; the operator talks to Redis anyway, and its work is
about Redis. Every replica watches the pods (its view stays warm); only the holder of the lock
acts. The holder renews it every ttl/3, so a replica that died is replaced within a TTL; a
replica that lost the lock stops acting at its next renewal (at most ttl/3 later).
"""

from __future__ import annotations

from redis.asyncio import Redis

from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.scripts import Script, source


async def hold_lock(redis: Redis, keys: Keys, replica: str, ttl_ms: int) -> bool:
    """Take or renew the operator's lock for ``replica``; True while it holds it."""
    script = redis.register_script(source(Script.LEAD))
    return bool(await script(keys=[keys.operator], args=[replica, ttl_ms]))


async def give_up_lock(redis: Redis, keys: Keys, replica: str) -> None:
    """Let another replica take over at once (on a clean exit)."""
    script = redis.register_script(source(Script.END_TURN))  # compare-and-delete
    await script(keys=[keys.operator], args=[replica])
