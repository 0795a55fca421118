"""The worker's heartbeat, sent from a thread of its own.

Other workers take a worker for dead once its heartbeat is older than the heartbeat timeout, and
take its tasks over (claims.Claims.take_over_dead). So the heartbeat must not wait for the
worker's event loop: a batch that keeps the loop busy (relaying a burst of tokens, parsing a long
output) would pass for a death. The thread runs an event loop and a Redis connection of its own
and beats every timeout/4. It dies with the process, which is how a SIGKILL shows.

A worker whose event loop hangs for good keeps beating, but stops renewing its tasks (RENEW, on
the event loop, worker/service.py): they move to another worker after the lease, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from redis.exceptions import RedisError

from llm_batcher import metrics
from llm_batcher.clock import now_ms
from llm_batcher.protocol.claims import Claims
from llm_batcher.protocol.connection import make_redis
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.scripts import register_all
from llm_batcher.settings import WorkerSettings

log = logging.getLogger(__name__)

_CRASH_DELAY_S = 0.5


class Heartbeat:
    """Beats for one worker until stopped."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.interval_s = settings.heartbeat_timeout_ms / 4000
        self.beat_at = time.monotonic()  # monotonic time of the last heartbeat Redis took
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._first_tried = threading.Event()  # the first heartbeat succeeded or failed
        self._stopping = False
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Start beating; returns once the first heartbeat was tried. Until then, other workers
        may still judge this id by the heartbeat of a killed run of it, and take over what this
        run claims."""
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        bound_s = 2 * self.settings.heartbeat_timeout_ms / 1000  # a beat times out in half that
        await asyncio.to_thread(self._first_tried.wait, bound_s)

    async def stop(self) -> None:
        """Stop beating and wait for the thread to end; safe to call twice."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):  # its loop already closed
                    self._loop.call_soon_threadsafe(self._stop.set)
        # bounded: one Redis call times out within the heartbeat timeout
        await asyncio.to_thread(thread.join, 2 * self.settings.heartbeat_timeout_ms / 1000 + 1)
        if thread.is_alive():
            log.warning("the heartbeat thread did not stop in time")
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._beat_until_stopped())

    async def _beat_until_stopped(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            if self._stopping:
                return
            self._loop, self._stop = asyncio.get_running_loop(), stop
        settings = self.settings
        redis = make_redis(
            settings, max_connections=1, socket_timeout_s=settings.heartbeat_timeout_ms / 1000
        )
        claims = Claims(redis, Keys(settings.key_prefix), register_all(redis))
        failing = False
        try:
            while not stop.is_set():
                failing = await self._beat(claims, failing)
                self._first_tried.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await redis.aclose()

    async def _beat(self, claims: Claims, failing: bool) -> bool:
        """One heartbeat; returns whether it failed. Logs a failure once, until one succeeds."""
        settings = self.settings
        try:
            await claims.heartbeat(
                settings.worker_id,
                now_ms(),
                settings.lease_ms,
                break_ms=settings.heartbeat_timeout_ms // 2,
            )
        except (RedisError, OSError) as exc:
            # Any Redis error (down, out of memory, read-only after a failover): retried at the
            # next beat; other workers may meanwhile take this one for dead, which is safe.
            if not failing:
                log.warning("heartbeat failed: %s", exc)
            return True
        except Exception:
            log.exception("heartbeat crashed; beating on")
            metrics.BACKGROUND_TASK_CRASHES.labels("heartbeat").inc()
            await asyncio.sleep(_CRASH_DELAY_S)
            return True
        if failing:
            log.info("heartbeat back")
        self.beat_at = time.monotonic()
        return False
