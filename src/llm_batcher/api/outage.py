"""When a request gives up on Redis: the API's outage policy for calls on the request path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import OutOfMemoryError

from llm_batcher.api.errors import redis_full, redis_unavailable
from llm_batcher.api.state import AppState
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE

T = TypeVar("T")

BUSY_WAIT_FACTOR = 10
"""How many Redis timeouts a request waits while Redis answers other requests."""


async def redis_call(state: AppState, call: Awaitable[T]) -> T:
    """Await Redis on behalf of a request; ApiError `redis_unavailable` (503) if Redis seems down.

    Redis counts as down when the call fails to connect, or gets no answer within
    redis_timeout_s while nothing else of this process heard from Redis either
    (liveness.RedisLiveness: streams' reads and pub/sub messages count too). In a burst, calls
    wait for a pool connection and for the event loop, and that wait is no outage: with a
    plain timeout, 1,000 streams opened at once were refused as "Redis is unreachable".
    A Redis that answers others but not this call is given up on after BUSY_WAIT_FACTOR
    timeouts. A Redis that refuses a write for lack of memory (maxmemory under noeviction)
    answers `redis_full` (503): it is up, so that is no outage.
    """
    loop = asyncio.get_running_loop()
    timeout_s = state.settings.redis_timeout_s
    give_up_at = loop.time() + timeout_s * BUSY_WAIT_FACTOR
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if done:
                result = task.result()
                state.liveness.answered()
                return result
            if state.liveness.silent_for_s() > timeout_s or loop.time() >= give_up_at:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
    except OutOfMemoryError as exc:
        state.liveness.answered()
        raise redis_full() from exc
    except REDIS_UNAVAILABLE as exc:
        raise redis_unavailable(exc) from exc
    finally:
        task.cancel()  # the request ended first (or gave up): do not leave the call running
