"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from redis.exceptions import OutOfMemoryError

from llm_batcher import __version__, metrics
from llm_batcher.api.auth import KeyRing
from llm_batcher.api.errors import install_error_handlers
from llm_batcher.api.fastpath import Api
from llm_batcher.api.guard import Guard
from llm_batcher.api.hub import ResultHub
from llm_batcher.api.liveness import RedisLiveness
from llm_batcher.api.openai_routes import router as openai_router
from llm_batcher.api.outage import BUSY_WAIT_FACTOR
from llm_batcher.api.routes import STATIC_DIR, router
from llm_batcher.api.state import AppState
from llm_batcher.background import keep_running
from llm_batcher.clock import now_ms
from llm_batcher.health import HealthServer
from llm_batcher.metrics import API_REGISTRY
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE, make_redis
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)

QUEUE_METRICS_INTERVAL_S = 1.0


def create_app(settings: ApiSettings) -> FastAPI:
    """Build the app; Redis is opened in the lifespan, not here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One bounded pool for the whole process: the hub's pub/sub connection plus commands.
        redis = make_redis(
            settings,
            max_connections=settings.redis_max_connections,
            socket_timeout_s=settings.redis_timeout_s * 5,
            # requests bound their own wait (routes._redis_call): a burst queues for the pool
            pool_timeout_s=settings.redis_timeout_s * BUSY_WAIT_FACTOR,
        )
        keys = Keys(settings.key_prefix)
        queue = TaskQueue.create(
            redis, keys, result_ttl_s=settings.result_ttl_s, stats_window_s=settings.stats_window_s
        )
        liveness = RedisLiveness()
        hub = ResultHub(redis, keys, liveness)
        app.state.llmb = AppState(
            settings=settings,
            redis=redis,
            queue=queue,
            hub=hub,
            liveness=liveness,
            api_keys=KeyRing.of(settings.api_key_list()),
            admin_keys=KeyRing.of(settings.admin_key_list()),
        )
        try:
            await queue.claims.ensure_group()
        except REDIS_UNAVAILABLE as exc:
            log.warning("Redis unreachable at start-up (%s); /readyz fails until it is back", exc)
        except OutOfMemoryError as exc:  # workers create the group too, once Redis has room
            log.warning("Redis is full at start-up (%s); requests get 503 redis_full", exc)
        await hub.start()
        refresher = keep_running("queue-metrics", lambda: _refresh_queue_metrics(queue, settings))
        # With a metrics port, /metrics leaves the public port (routes.py answers 404 there).
        metrics_server = None
        if settings.metrics_apart:
            metrics_server = HealthServer(
                settings.host, settings.metrics_port, None, API_REGISTRY, settings.metrics_fd
            )
            await metrics_server.start()
        try:
            yield
        finally:
            if metrics_server is not None:
                await metrics_server.close()
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await hub.stop()
            await redis.aclose()

    app = Api(
        title="llm-batcher",
        version=__version__,
        description="Batches LLM requests through Redis and streams the answers as SSE.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.guard = Guard(settings)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(openai_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _refresh_queue_metrics(queue: TaskQueue, settings: ApiSettings) -> None:
    """Keep the queue gauges current. The API exports them because it always runs, while
    workers may be scaled to zero; every replica exports the same values (aggregate with max)."""
    while True:
        try:
            async with asyncio.timeout(settings.redis_timeout_s * 2):
                depth = await queue.claims.depth(settings.lease_ms)
                workers = await queue.claims.live_workers(now_ms(), settings.lease_ms)
            metrics.QUEUE_DEPTH.set(depth.waiting)
            metrics.QUEUE_IN_FLIGHT.set(depth.in_flight)
            metrics.WORKERS_LIVE.set(workers)
            metrics.REDIS_UP.set(1)
        except REDIS_UNAVAILABLE as exc:
            metrics.REDIS_UP.set(0)
            log.debug("queue metrics not refreshed: %s", exc)
        await asyncio.sleep(QUEUE_METRICS_INTERVAL_S)
