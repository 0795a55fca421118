"""The worker's heartbeat comes from a thread of its own (worker/heartbeat.py), against a real
Redis: batch work that blocks the event loop does not make the worker look dead."""

from __future__ import annotations

import threading
import time

from redis.asyncio import Redis

from llm_batcher.protocol.keys import Keys
from llm_batcher.settings import WorkerSettings
from llm_batcher.worker.heartbeat import Heartbeat

TIMEOUT_MS = 400


async def beat_of(redis: Redis, keys: Keys, worker: str) -> tuple[int, int]:
    """The worker's last heartbeat and the start of its unbroken run, in Redis's ms."""
    value = await redis.hget(keys.beats, worker)
    assert value is not None, f"no heartbeat of {worker}"
    last, since = value.decode().split(",")
    return int(last), int(since)


async def test_the_heartbeat_goes_on_while_the_event_loop_is_blocked(
    redis: Redis, redis_url: str, key_prefix: str
) -> None:
    settings = WorkerSettings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        worker_id="busy",
        heartbeat_timeout_ms=TIMEOUT_MS,
    )
    keys = Keys(key_prefix)
    heartbeat = Heartbeat(settings)
    await heartbeat.start()  # returns after the first heartbeat
    try:
        first_last, first_since = await beat_of(redis, keys, "busy")
        # The event loop busy (and holding the GIL) for three heartbeat timeouts, as by a long
        # stretch of batch work: the blocking is what is under test; it waits for nothing.
        busy_until = time.monotonic() + 3 * TIMEOUT_MS / 1000
        while time.monotonic() < busy_until:
            pass
        last, since = await beat_of(redis, keys, "busy")
    finally:
        await heartbeat.stop()
        await heartbeat.stop()  # safe twice
    assert since == first_since  # one run of heartbeats, without a gap above timeout/2
    assert last - first_last >= 2 * TIMEOUT_MS
    assert not any(t.name == "heartbeat" for t in threading.enumerate())  # the thread ended
