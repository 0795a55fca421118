"""The operator process: kopf watching the worker pods, and the periodic loops beside it.

Shutdown order (kopf handles SIGTERM and SIGINT): kopf stops its watches, runs the cleanup
handler, which stops the loops and gives up the lock (another replica acts at once); then the
metrics server closes and Redis last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import kopf
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llm_batcher import metrics
from llm_batcher.background import keep_running
from llm_batcher.clock import now_ms
from llm_batcher.health import HealthServer
from llm_batcher.operator import kube
from llm_batcher.operator.handlers import build_registry
from llm_batcher.operator.lead import give_up_lock, hold_lock
from llm_batcher.operator.reconcile import Reconciler
from llm_batcher.protocol.keys import Keys
from llm_batcher.settings import OperatorSettings

log = logging.getLogger(__name__)

DEAD_LETTER_REASON = "TaskDeadLettered"


@dataclass
class Lead:
    """Whether this replica holds the operator's lock (shared by kopf's copies of the memo)."""

    acting: bool = False


class Operator:
    """The operator's state: kopf's ``memo`` in every handler, and the owner of the loops."""

    def __init__(self, settings: OperatorSettings, redis: Redis, replica: str = "") -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.reconciler = Reconciler(
            redis,
            self.keys,
            lease_ms=settings.lease_ms,
            patches_per_s=settings.patches_per_s,
            patch_burst=settings.patch_burst,
        )
        self.lead = Lead()
        self._kopf: kopf.OperatorSettings | None = None
        self._loops: list[asyncio.Task[None]] = []

    def start_loops(self, kopf_settings: kopf.OperatorSettings) -> None:
        """Start the lock, sweep, deletion-cost and dead-letter loops."""
        self._kopf = kopf_settings
        s = self.settings
        self._loops = [
            keep_running("operator-lock", self._lock_loop),
            keep_running("operator-sweep", self._every(s.sweep_s, self.sweep)),
            keep_running("operator-costs", self._every(s.cost_s, self.patch_costs)),
            keep_running(
                "operator-dead-letters", self._every(s.dead_letter_poll_s, self.report_dead)
            ),
        ]

    async def stop_loops(self) -> None:
        """Stop the loops and give up the lock; safe to call twice."""
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.lead.acting:
            self.lead.acting = False
            metrics.OPERATOR_LEADING.set(0)
            with contextlib.suppress(RedisError, OSError):
                await give_up_lock(self.redis, self.keys, self.replica)

    async def _lock_loop(self) -> None:
        while True:
            try:
                acting = await hold_lock(
                    self.redis, self.keys, self.replica, self.settings.lock_ttl_ms
                )
            except (RedisError, OSError) as exc:
                log.warning("could not renew the operator lock (%s): not acting", exc)
                acting = False
            if acting != self.lead.acting:
                log.info("operator %s %s", self.replica, "acts" if acting else "stands by")
            self.lead.acting = acting
            metrics.OPERATOR_LEADING.set(int(acting))
            await asyncio.sleep(self.settings.lock_ttl_ms / 3000)

    def _every(
        self, interval_s: float, step: Callable[[], Awaitable[None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """A loop that runs ``step`` every interval while this replica acts. The first run is
        one interval after the start: by then kopf has listed the pods."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                if not self.lead.acting:
                    continue
                try:
                    await step()
                except (RedisError, OSError) as exc:
                    log.warning("Redis unavailable (%s); retrying in %.1f s", exc, interval_s)

        return loop

    async def sweep(self) -> None:
        """Release consumers of no live pod (reconcile.Reconciler.sweep)."""
        await self.reconciler.sweep(now_ms())

    async def patch_costs(self) -> None:
        """Bring worker pods' pod-deletion-cost in step with their tasks."""
        assert self._kopf is not None
        for name, patch in await self.reconciler.cost_patches(time.monotonic()):
            ok = await kube.patch_pod(self._kopf, self.settings.namespace, name, patch)
            metrics.POD_PATCHES.labels("ok" if ok else "failed").inc()
            if not ok:
                self.reconciler.patch_failed(name)

    async def report_dead(self) -> None:
        """Post an Event on the workers' Deployment for each new dead letter."""
        assert self._kopf is not None
        letters = await self.reconciler.dead_letters()
        for letter in letters:
            message = (
                f"task {letter.task_id} dead-lettered after {letter.attempts} attempt(s), "
                f"last on worker {letter.worker}"
            )
            await kube.post_deployment_event(
                self._kopf,
                self.settings.namespace,
                self.settings.worker_deployment,
                DEAD_LETTER_REASON,
                message,
            )
            metrics.DEAD_LETTER_EVENTS.inc()
            log.info("%s", message, extra={"task_id": letter.task_id})
        if letters:
            await self.reconciler.dead_letters_reported(letters[-1])


async def run_operator(
    settings: OperatorSettings, redis: Redis, stop: asyncio.Event | None = None
) -> None:
    """Run kopf on the worker pods of ``settings.namespace`` until SIGTERM or SIGINT (or until
    ``stop`` is set)."""
    operator = Operator(settings, redis)
    metrics_server = (
        HealthServer(settings.health_host, settings.metrics_port, None, metrics.OPERATOR_REGISTRY)
        if settings.metrics_port
        else None
    )
    if metrics_server is not None:
        await metrics_server.start()
    log.info(
        "operator %s watching worker pods (%s) in namespace %s",
        operator.replica, settings.worker_selector, settings.namespace,
    )  # fmt: skip
    try:
        await kopf.operator(
            registry=build_registry(settings),
            namespaces=[settings.namespace],
            standalone=True,  # no kopf peering: one acting replica through a Redis lock (lead.py)
            liveness_endpoint=f"http://{settings.health_host}:{settings.liveness_port}/healthz",
            memo=operator,
            stop_flag=stop,
        )
    finally:
        await operator.stop_loops()
        if metrics_server is not None:
            await metrics_server.close()
