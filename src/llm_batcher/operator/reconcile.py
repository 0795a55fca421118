"""What the operator does, against Redis, without Kubernetes: the kopf handlers (handlers.py)
and the periodic loops (service.py) call these with pod bodies and send out what they return.

- A gone worker pod (deleted, failed, evicted, all containers terminated) gives up its tasks at
  once: protocol/consumers.release_consumer hands them on through the workers' own takeover
  (claims.Claims.take_over_dead, naming the worker), then removes the consumer.
  A draining pod (being deleted, containers still running) keeps them: it is finishing its batch
  and hands back the rest itself.
- A consumer of no known pod whose worker has not sent a heartbeat for a lease is removed the
  same way, holding tasks or not (the sweep). A heartbeat younger than a lease spares it: its pod
  may be new and not yet seen, or it runs outside Kubernetes.
- Worker pods' pod-deletion-cost follows the tasks they hold, patched only on change and through
  a token bucket.
- New dead-letter entries become Kubernetes Events on the workers' Deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llm_batcher import metrics
from llm_batcher.operator.pods import (
    DELETION_COST,
    PodState,
    TokenBucket,
    consumer_of,
    cost_patch,
    pod_state,
)
from llm_batcher.protocol.claims import Claims
from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.consumers import consumer_holdings, heartbeats, release_consumer
from llm_batcher.protocol.keys import RELEASED_CONSUMER, Keys
from llm_batcher.protocol.scripts import register_all

log = logging.getLogger(__name__)

_DEAD_LETTERS_AT_ONCE = 100


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task the workers gave up on (start.lua writes these to keys.dead)."""

    entry_id: str
    task_id: str
    attempts: int
    worker: str


class Reconciler:
    """The operator's view of the worker pods, and its actions on Redis."""

    def __init__(
        self, redis: Redis, keys: Keys, *, lease_ms: int, patches_per_s: float, patch_burst: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.claims = Claims(redis, keys, register_all(redis))  # the workers' own takeover
        self.lease_ms = lease_ms
        self.pods: dict[str, Mapping[str, Any]] = {}  # live and draining worker pods, by name
        self._limiter = TokenBucket(patches_per_s, patch_burst)
        self._costs: dict[str, str] = {}  # pod -> the deletion cost last patched onto it

    async def pod_event(
        self, event_type: str | None, pod: Mapping[str, Any], *, act: bool = True
    ) -> int | None:
        """Take a worker pod's watch event; a gone pod's consumer is released (``act``: by the
        replica that acts, lead.py; the others only follow the pods). Returns how many tasks it
        held, or None while the pod lives (or drains) or when not acting."""
        name = consumer_of(pod)
        if pod_state(event_type, pod) is not PodState.GONE:
            self.pods[name] = pod
            annotations = pod.get("metadata", {}).get("annotations") or {}
            sent = self._costs.get(name)
            if sent is not None and sent == annotations.get(DELETION_COST):
                del self._costs[name]  # the watch shows the patch: the pod is the truth again
            return None
        self.pods.pop(name, None)
        self._costs.pop(name, None)
        return await self._release(name, "pod gone") if act else None

    async def sweep(self, now_ms: int) -> int:
        """Release every consumer of no known pod whose heartbeat is older than a lease (or
        missing); returns how many consumers went."""
        holdings = await consumer_holdings(self.redis, self.keys)
        beats = await heartbeats(self.redis, self.keys)
        removed = 0
        for consumer in holdings:
            if consumer == RELEASED_CONSUMER or consumer in self.pods:
                continue
            if beats.get(consumer, 0) > now_ms - self.lease_ms:
                continue
            await self._release(consumer, "no pod")
            removed += 1
        return removed

    async def _release(self, consumer: str, why: str) -> int:
        moved = await release_consumer(self.claims, consumer)
        metrics.CONSUMERS_REMOVED.labels(why).inc()
        metrics.TASKS_RECLAIMED.inc(moved)
        log.info("released consumer %s (%s): %d task(s) handed on", consumer, why, moved)
        return moved

    async def cost_patches(self, now_s: float) -> list[tuple[str, dict[str, Any]]]:
        """The pod patches due now: pods whose deletion cost differs from their tasks, as many as
        the rate limit allows (the rest wait for the next round)."""
        holdings = await consumer_holdings(self.redis, self.keys)
        due = []
        for name, pod in self.pods.items():
            patch = cost_patch(self._with_cost_sent(name, pod), holdings.get(name, 0))
            if patch is None:
                continue
            if not self._limiter.take(now_s):
                metrics.POD_PATCHES.labels("deferred").inc()
                break
            self._costs[name] = patch["metadata"]["annotations"][DELETION_COST]
            due.append((name, patch))
        return due

    def patch_failed(self, name: str) -> None:
        """Forget the cost sent to a pod whose patch failed, so it is tried again."""
        self._costs.pop(name, None)

    def _with_cost_sent(self, name: str, pod: Mapping[str, Any]) -> Mapping[str, Any]:
        """The pod as it is once the last patch sent to it shows in the watch."""
        sent = self._costs.get(name)
        if sent is None:
            return pod
        metadata = dict(pod.get("metadata") or {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), DELETION_COST: sent}
        return {**pod, "metadata": metadata}

    async def dead_letters(self) -> list[DeadLetter]:
        """Dead-letter entries added since the last call (in Redis: keys.operator_dead_seen);
        the first call ever only notes where the stream ends."""
        seen = await self.redis.get(self.keys.operator_dead_seen)
        if seen is None:
            newest: Any = await self.redis.xrevrange(self.keys.dead, count=1)
            end = reply_text(newest[0][0]) if newest else "0-0"
            await self.redis.set(self.keys.operator_dead_seen, end)
            return []
        rows: Any = await self.redis.xrange(
            self.keys.dead, min=f"({reply_text(seen)}", count=_DEAD_LETTERS_AT_ONCE
        )
        return [
            DeadLetter(
                entry_id=reply_text(entry_id),
                task_id=reply_text(fields[b"task_id"]),
                attempts=int(fields[b"attempts"]),
                worker=reply_text(fields.get(b"worker", b"")),
            )
            for entry_id, fields in rows
        ]

    async def dead_letters_reported(self, last: DeadLetter) -> None:
        """Note that dead letters up to ``last`` became Events."""
        await self.redis.set(self.keys.operator_dead_seen, last.entry_id)
