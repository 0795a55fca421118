"""Taking over the tasks of dead workers: by heartbeat, by lease, and those a killed run of this
worker's own id left behind (claims.Claims.take_over_dead does the work in Redis)."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from llm_batcher import metrics
from llm_batcher.protocol.claims import Claim, Claims
from llm_batcher.settings import WorkerSettings

log = logging.getLogger(__name__)

_ORPHANS_MAX = 10_000  # most tasks an earlier run of a worker id may have left pending


async def take_over(claims: Claims, settings: WorkerSettings, size: int) -> list[Claim]:
    """Up to ``size`` tasks of workers whose heartbeat stopped, else of those whose lease
    lapsed, for this worker to run."""
    worker = settings.worker_id
    dead = await claims.take_over_dead(worker, size, silence_ms=settings.heartbeat_timeout_ms)
    taken, whose = dead.claims, f"dead worker(s) {' '.join(dead.workers)}"
    if not taken:
        taken = await claims.reclaim_expired(worker, size, settings.lease_ms)
        whose = "a worker whose lease lapsed, or that handed them back"
    if taken:
        metrics.TASKS_TAKEN_OVER.inc(len(taken))
        log.info(
            "took over %d task(s) from %s: %s",
            len(taken), whose, " ".join(c.task_id for c in taken),
        )  # fmt: skip
    return taken


async def hand_on_orphans(claims: Claims, settings: WorkerSettings) -> None:
    """Hand on the tasks an earlier run of this worker id left pending (it was killed, and
    restarted under the same id by `up`, Compose or Kubernetes): they are nobody's now, and this
    run's heartbeat would keep them from the workers that judge by heartbeats. Any worker's next
    reclaim takes them."""
    worker = settings.worker_id
    try:
        orphans = await claims.take_over_dead(
            worker,
            _ORPHANS_MAX,
            silence_ms=settings.heartbeat_timeout_ms,
            workers=[worker],
            idle_ms=10 * settings.lease_ms,
        )
    except (RedisError, OSError) as exc:
        log.warning("could not hand on the tasks of an earlier run (%s): they wait a lease", exc)
        return
    if orphans.claims:
        log.info(
            "handed on %d task(s) an earlier run of worker %s left: %s",
            len(orphans.claims), worker, " ".join(c.task_id for c in orphans.claims),
        )  # fmt: skip
