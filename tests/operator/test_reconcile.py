"""The operator's actions against a real Redis, driven by pod-shaped watch events: a gone pod's
tasks go to live workers at once (fencing kept), a draining pod keeps them, stale consumers go."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from llm_batcher import metrics
from llm_batcher.clock import now_ms
from llm_batcher.operator.pods import DELETION_COST
from llm_batcher.operator.reconcile import Reconciler
from llm_batcher.protocol.consumers import consumer_holdings
from llm_batcher.protocol.keys import RELEASED_CONSUMER, WORKER_GROUP
from llm_batcher.protocol.outcomes import StartOutcome, TaskState, WriteResult
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from tests.operator.pods import deleted, draining, evicted, failed, worker_pod
from tests.support.results import make_queue, submit

LEASE_MS = 5000  # the default LLMB_LEASE_MS


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix)
    await q.claims.ensure_group()
    return q


@pytest.fixture
def reconciler(redis: Redis, queue: TaskQueue) -> Reconciler:
    return Reconciler(redis, queue.keys, lease_ms=LEASE_MS, patches_per_s=5, patch_burst=10)


async def claim_batch(queue: TaskQueue, worker: str, n: int) -> list[StartedTask]:
    """``worker`` takes and starts ``n`` new tasks, as a worker forming a batch does."""
    for i in range(n):
        await submit(queue, f"context {i}")
    await queue.claims.heartbeat(worker, now_ms(), LEASE_MS, LEASE_MS)
    claims = await queue.claims.read_new(worker, n, None)
    assert len(claims) == n
    started = [
        await queue.tasks.start(c, worker=worker, now_ms=now_ms(), max_attempts=3) for c in claims
    ]
    assert all(isinstance(s, StartedTask) for s in started), started
    return [s for s in started if isinstance(s, StartedTask)]


async def test_a_deleted_pod_mid_batch_hands_its_tasks_to_a_live_worker_at_once(
    queue: TaskQueue, reconciler: Reconciler
) -> None:
    batch = await claim_batch(queue, "llmb-worker-a", 3)
    await reconciler.pod_event(None, worker_pod("llmb-worker-b"))
    await reconciler.pod_event("MODIFIED", worker_pod("llmb-worker-a"))
    before = metrics.TASKS_RECLAIMED._value.get()

    assert await reconciler.pod_event("DELETED", deleted("llmb-worker-a")) == 3

    holdings = await consumer_holdings(queue.redis, queue.keys)
    assert "llmb-worker-a" not in holdings  # the consumer went, after its tasks
    assert holdings[RELEASED_CONSUMER] == 3
    assert metrics.TASKS_RECLAIMED._value.get() - before == 3
    # The live worker's next takeover finds them at once, without waiting for the lease.
    taken = await queue.claims.reclaim_expired("llmb-worker-b", 10, LEASE_MS)
    assert sorted(c.task_id for c in taken) == sorted(t.task_id for t in batch)
    retried = await queue.tasks.start(
        taken[0], worker="llmb-worker-b", now_ms=now_ms(), max_attempts=3
    )
    assert isinstance(retried, StartedTask) and retried.attempt == 2
    # Fencing: the gone worker's writes (had it still run) no longer land.
    old = next(t for t in batch if t.task_id == retried.task_id)
    assert await queue.tasks.complete(old, {"text": "late"}) is WriteResult.FENCED
    assert await queue.claims.renew("llmb-worker-a", [old.entry_id]) == [old.entry_id]


async def test_a_draining_pod_keeps_its_tasks(queue: TaskQueue, reconciler: Reconciler) -> None:
    await claim_batch(queue, "llmb-worker-a", 2)
    assert await reconciler.pod_event("MODIFIED", draining("llmb-worker-a")) is None
    assert (await consumer_holdings(queue.redis, queue.keys))["llmb-worker-a"] == 2
    assert await queue.claims.reclaim_expired("llmb-worker-b", 10, LEASE_MS) == []
    await reconciler.sweep(now_ms() + 10 * LEASE_MS)  # a known pod: never swept
    assert (await consumer_holdings(queue.redis, queue.keys))["llmb-worker-a"] == 2


@pytest.mark.parametrize("body", [failed, evicted], ids=["failed", "evicted"])
async def test_a_failed_or_evicted_pod_gives_up_its_tasks(
    queue: TaskQueue, reconciler: Reconciler, body: object
) -> None:
    await claim_batch(queue, "llmb-worker-a", 2)
    assert callable(body)
    assert await reconciler.pod_event("MODIFIED", body("llmb-worker-a")) == 2
    assert len(await queue.claims.reclaim_expired("llmb-worker-b", 10, LEASE_MS)) == 2


async def test_a_gone_worker_s_marks_and_read_turn_go_with_it(
    queue: TaskQueue, reconciler: Reconciler
) -> None:
    keys = queue.keys
    await queue.claims.heartbeat("llmb-worker-a", now_ms(), LEASE_MS, LEASE_MS)
    await queue.claims.note_idle("llmb-worker-a", now_ms())
    assert await queue.claims.take_read_turn("llmb-worker-a", 60_000, silence_ms=1500)
    assert await reconciler.pod_event("DELETED", deleted("llmb-worker-a")) == 0
    assert await queue.redis.zscore(keys.workers, "llmb-worker-a") is None
    assert await queue.redis.zscore(keys.idle, "llmb-worker-a") is None
    # no wait for the turn
    assert await queue.claims.take_read_turn("llmb-worker-b", 60_000, silence_ms=1500)


async def test_the_sweep_removes_consumers_of_no_pod(
    queue: TaskQueue, reconciler: Reconciler
) -> None:
    await claim_batch(queue, "gone-holding", 2)  # its pod went while the operator was down
    # A consumer of an old pod that held nothing when it went.
    await queue.redis.xgroup_createconsumer(queue.keys.tasks, WORKER_GROUP, "gone-empty")
    await claim_batch(queue, "new-pod", 1)  # its pod is not yet seen, but it beats
    await claim_batch(queue, "known-pod", 1)
    await reconciler.pod_event(None, worker_pod("known-pod"))
    later = now_ms() + LEASE_MS // 2  # the beats are younger than a lease
    await queue.redis.zadd(queue.keys.workers, {"gone-holding": later - 2 * LEASE_MS})

    assert await reconciler.sweep(later) == 2

    holdings = await consumer_holdings(queue.redis, queue.keys)
    assert set(holdings) == {"new-pod", "known-pod", RELEASED_CONSUMER}
    assert holdings[RELEASED_CONSUMER] == 2
    assert len(await queue.claims.reclaim_expired("known-pod", 10, LEASE_MS)) == 2


async def test_a_replica_that_does_not_act_only_follows_the_pods(
    queue: TaskQueue, reconciler: Reconciler
) -> None:
    await claim_batch(queue, "llmb-worker-a", 1)
    await reconciler.pod_event(None, worker_pod("llmb-worker-a"), act=False)
    assert "llmb-worker-a" in reconciler.pods
    assert await reconciler.pod_event("DELETED", deleted("llmb-worker-a"), act=False) is None
    assert "llmb-worker-a" not in reconciler.pods
    assert (await consumer_holdings(queue.redis, queue.keys))["llmb-worker-a"] == 1


async def test_deletion_costs_follow_the_tasks_on_change_within_the_rate(
    queue: TaskQueue, redis: Redis
) -> None:
    reconciler = Reconciler(redis, queue.keys, lease_ms=LEASE_MS, patches_per_s=1, patch_burst=2)
    await claim_batch(queue, "busy", 2)
    for name in ("busy", "idle", "idle-patched"):
        annotations = {DELETION_COST: "0"} if name == "idle-patched" else {}
        await reconciler.pod_event(None, worker_pod(name, annotations=annotations))

    first = await reconciler.cost_patches(now_s=100.0)
    assert first == [
        ("busy", {"metadata": {"annotations": {DELETION_COST: "2"}}}),
        ("idle", {"metadata": {"annotations": {DELETION_COST: "0"}}}),
    ]
    assert await reconciler.cost_patches(now_s=100.1) == []  # sent: not again until it changes
    await reconciler.pod_event("MODIFIED", worker_pod("busy", annotations={DELETION_COST: "2"}))
    await claim_batch(queue, "idle", 1)
    await claim_batch(queue, "idle-patched", 1)
    deferred = metrics.POD_PATCHES.labels("deferred")._value.get()
    assert await reconciler.cost_patches(now_s=100.2) == []  # the bucket is empty
    assert metrics.POD_PATCHES.labels("deferred")._value.get() == deferred + 1
    later = await reconciler.cost_patches(now_s=101.2)  # one token a second
    assert later == [("idle", {"metadata": {"annotations": {DELETION_COST: "1"}}})]
    reconciler.patch_failed("idle")
    again = await reconciler.cost_patches(now_s=102.2)
    assert again == [("idle", {"metadata": {"annotations": {DELETION_COST: "1"}}})]
    # The watch shows the patch, then someone else changes the cost: it is put back.
    await reconciler.pod_event("MODIFIED", worker_pod("idle", annotations={DELETION_COST: "1"}))
    await reconciler.pod_event("MODIFIED", worker_pod("idle", annotations={DELETION_COST: "9"}))
    assert await reconciler.cost_patches(now_s=110.0) == [
        ("idle", {"metadata": {"annotations": {DELETION_COST: "1"}}}),
        ("idle-patched", {"metadata": {"annotations": {DELETION_COST: "1"}}}),
    ]


async def test_dead_letters_are_reported_once(queue: TaskQueue, reconciler: Reconciler) -> None:
    async def dead_letter() -> str:
        task_id = await submit(queue, "poison")
        claim = (await queue.claims.read_new("w", 1, None))[0]
        first = await queue.tasks.start(claim, worker="w", now_ms=now_ms(), max_attempts=1)
        assert isinstance(first, StartedTask)
        again = await queue.tasks.start(claim, worker="w", now_ms=now_ms(), max_attempts=1)
        assert not isinstance(again, StartedTask) and again.outcome is StartOutcome.DEAD
        return task_id

    await dead_letter()  # before the operator ever looked: not reported
    assert await reconciler.dead_letters() == []
    task_id = await dead_letter()
    letters = await reconciler.dead_letters()
    assert [(d.task_id, d.attempts, d.worker) for d in letters] == [(task_id, 1, "w")]
    assert await reconciler.dead_letters() == letters  # until reported
    await reconciler.dead_letters_reported(letters[-1])
    assert await reconciler.dead_letters() == []
    state = await queue.redis.hget(queue.keys.task(task_id), "state")
    assert state is not None and state.decode() == TaskState.ERROR


async def test_reclaim_takes_milliseconds(queue: TaskQueue, reconciler: Reconciler) -> None:
    """The figure the README compares with the lease (LLMB_LEASE_MS, 5000 ms by default)."""
    batch = await claim_batch(queue, "llmb-worker-a", 8)
    began = time.perf_counter()
    await reconciler.pod_event("DELETED", deleted("llmb-worker-a"))
    taken = await queue.claims.reclaim_expired("llmb-worker-b", 8, LEASE_MS)
    elapsed_ms = (time.perf_counter() - began) * 1000
    print(f"\nMEASURED release_and_takeover_ms={elapsed_ms:.2f} for 8 tasks (lease {LEASE_MS} ms)")
    assert len(taken) == len(batch)
    # The claim is "far below the lease" (a few ms here): a tenth of it leaves a loaded machine
    # half a second of slack over the old bound and still tells it from waiting out a lease.
    assert elapsed_ms < LEASE_MS / 10
