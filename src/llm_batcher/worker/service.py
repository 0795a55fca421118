"""The worker process: one top-level coroutine that claims batches and runs them.

Near the end of a batch it claims the next one (worker/ahead.py), so that batches follow each
other without a gap, but only while no other worker is idle.

Shutdown order (SIGTERM or SIGINT sets the stop event):
1. stop claiming: the claim loop sees the stop event within one idle poll (at most a second);
2. the running batch (and the retries it started) may finish within ``drain_s``;
3. past that, it is cancelled: the LLM child's process group is killed, its files removed, and the
   tasks this worker still holds are handed back at once for another worker to resume; the
   attempts it gives up this way are refunded (HAND_BACK): a scale-down is no failure of a task,
   so it never brings one nearer to dead-lettering;
4. the spare LLM child, if one is kept (worker/spare.py), is stopped with its process group and
   reaped;
5. the heartbeat stops, the worker leaves the live set, stops its health server and closes Redis.
SIGKILL skips all of it: its heartbeat stops, and once it is older than the heartbeat timeout,
the next idle worker takes its tasks over (worker/heartbeat.py). Tasks this worker still holds
but no longer renews (its event loop hangs) move after their lease. A taken-over attempt
counts, since a worker killed by its batch (out of memory, a poison context) looks the same from
Redis: max_attempts must bound those. A worker whose claim loop fails with an exception hands
its tasks back without a refund, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from llm_batcher import metrics
from llm_batcher.background import keep_running, spawn
from llm_batcher.clock import now_ms
from llm_batcher.health import HealthServer
from llm_batcher.metrics import WORKER_REGISTRY
from llm_batcher.protocol.claims import Claim
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.outcomes import StartOutcome
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from llm_batcher.settings import WorkerSettings
from llm_batcher.worker.ahead import ReadAhead
from llm_batcher.worker.batch import BatchRunner
from llm_batcher.worker.child import remove_stale_batch_dirs
from llm_batcher.worker.heartbeat import Heartbeat
from llm_batcher.worker.takeover import hand_on_orphans, take_over
from llm_batcher.worker.window import arrival_ms, wait_ms

log = logging.getLogger(__name__)

_TURN_POLL_S = 0.02  # how often an idle worker asks whether it may read
_IDLE_NOTE_S = 0.25  # how often an idle worker renews its mark in keys.idle
# Longest wait between tries while Redis is unavailable: a Sentinel failover or a restart ends
# in seconds, and the backoff's overshoot past it (up to this long) delays the worker's return.
_REDIS_RETRY_MAX_S = 1.0


class Worker:
    """Claims tasks, forms batches and runs them until stopped."""

    def __init__(self, settings: WorkerSettings, redis: Redis) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.queue = TaskQueue.create(
            redis,
            Keys(settings.key_prefix),
            result_ttl_s=settings.result_ttl_s,
            stats_window_s=settings.stats_window_s,
        )
        self.runner = BatchRunner(self.queue, settings)
        self._idle_noted_at = 0.0
        self._ending_note: asyncio.Future[None] | None = None  # the idle mark of _ending()
        self.held: dict[str, str] = {}  # entry id -> task id, for lease renewal and hand-back
        # entry id -> attempt, of the held tasks this worker started and that did not fail: the
        # attempts to refund if the worker stops in order before they end
        self.running: dict[str, int] = {}
        # An idle worker looks for tasks to take over between reads that block this long.
        self.idle_block_ms = min(1000, settings.lease_ms // 3, settings.heartbeat_timeout_ms // 3)
        self.ahead = ReadAhead(self.queue.claims, settings, self._turn_ms(), self._hold)
        self.redis_ok_at = 0.0  # monotonic time of the last successful Redis call
        self.stopping = False
        # With a metrics port, /metrics leaves the health port (SECURITY.md: metrics reach only
        # the monitoring namespace, probes the kubelet).
        separate = settings.metrics_apart
        self.health = HealthServer(
            settings.health_host,
            settings.health_port,
            self._readiness,
            None if separate else WORKER_REGISTRY,
            settings.health_fd,
        )
        self.metrics_server = (
            HealthServer(
                settings.health_host,
                settings.metrics_port,
                None,
                WORKER_REGISTRY,
                settings.metrics_fd,
            )
            if separate
            else None
        )
        self.heartbeat = Heartbeat(settings)
        metrics.IN_FLIGHT.set_function(lambda: len(self.held))
        metrics.HEARTBEAT_AGE.set_function(lambda: time.monotonic() - self.heartbeat.beat_at)
        metrics.WORKER_REDIS_UP.set_function(lambda: float(self._redis_recent()))

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down in the documented order."""
        removed = remove_stale_batch_dirs(self.settings.tmp_dir)
        if removed:
            log.info("removed %d batch folder(s) left by dead workers", removed)
        port = await self.health.start()
        if self.metrics_server is not None:
            await self.metrics_server.start()
        log.info(
            "worker %s ready: health on %s:%d, batches of up to %d, window %d ms (%s)",
            self.id, self.settings.health_host, port, self.settings.max_batch,
            self.settings.window_ms, self.settings.window_policy,
        )  # fmt: skip
        # before the first heartbeat says this id is alive again
        await hand_on_orphans(self.queue.claims, self.settings)
        await self.heartbeat.start()
        renewal = keep_running("renewal", self._renew_loop)
        self.runner.open()
        orderly = False  # the claim loop ended because of the stop event, not an exception
        try:
            await self._claim_loop(stop)
            orderly = True
        finally:
            self.stopping = True
            await self.runner.close()
            # Renewal stops before the hand-back: a renewal just after it would keep the
            # handed-back tasks from other workers for another lease.
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await self._hand_back(refund=orderly)
            await self.heartbeat.stop()  # before leaving: a later beat would mark it alive again
            await self._ending_noted()
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await self.queue.claims.leave(self.id)
            await self.queue.claims.close()
            await self.health.close()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            log.info("worker %s stopped", self.id)

    # --- claiming -------------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        ahead: list[Claim] = []  # read ahead during the last batch (worker/ahead.py)
        while not stop.is_set():
            try:
                claims, ahead = await self._gather(stop, ahead), []
                self._mark_redis_ok()
                backoff = 0.1
            except (RedisError, OSError) as exc:
                # Down, restarting, read-only after a failover, out of memory: wait and retry.
                log.warning("Redis unavailable or refusing (%s); retrying in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, _REDIS_RETRY_MAX_S)
                ahead = [c for c in ahead if c.entry_id in self.held]  # those not dropped
                continue
            if claims:
                ahead = await self._run_with_drain(claims, stop)

    def _turn_ms(self) -> int:
        return self.idle_block_ms + self.settings.window_ms + 1000

    async def _gather(self, stop: asyncio.Event, ahead: list[Claim]) -> list[Claim]:
        """Take tasks for one batch, when it is this worker's turn to read (see keys.reader);
        tasks read ahead start at once if another worker has the turn."""
        if len(ahead) >= self.settings.max_batch:
            return ahead  # a full batch: nothing to read
        if not ahead:
            await self._note_idle()
        silence_ms = self.settings.heartbeat_timeout_ms
        if not await self.queue.claims.take_read_turn(
            self.id, self._turn_ms(), silence_ms=silence_ms
        ):
            if ahead:
                return ahead
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _TURN_POLL_S)
            return []
        try:
            claims = await self._gather_in_turn(stop, ahead)
        except BaseException:
            await self._end_read_turn()
            raise
        if claims:  # the batch starts while the turn ends: it need not wait for that round trip
            spawn(self._end_read_turn(), "end the read turn")
        else:  # the next read follows at once, and must find the turn free
            await self._end_read_turn()
        return claims

    async def _end_read_turn(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.queue.claims.end_read_turn(self.id)

    async def _gather_in_turn(self, stop: asyncio.Event, ahead: list[Claim]) -> list[Claim]:
        """Tasks read ahead, else taken-over ones, else new ones: the first, then more within
        the window."""
        size = self.settings.max_batch
        claims = ahead or await self._first_claims(size)
        window_start = time.monotonic()
        window_s = await self._window_s(claims) if 0 < len(claims) < size else 0.0
        window_end = window_start + window_s
        try:
            while claims and len(claims) < size and not stop.is_set():
                remaining_ms = int((window_end - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                more = await self.queue.claims.read_new(self.id, size - len(claims), remaining_ms)
                self._hold(more)
                claims += more
        except (RedisError, OSError):
            # These claims are dropped unstarted: stop renewing them, or the heartbeat would keep
            # them from every worker forever. They return (to any worker) after the lease.
            self._forget(claims)
            raise
        if claims:
            metrics.WINDOW_WAIT.observe(time.monotonic() - window_start)
        return claims

    async def _first_claims(self, size: int) -> list[Claim]:
        """Tasks of a dead worker, else whose lease lapsed, else new ones."""
        claims = await take_over(self.queue.claims, self.settings, size)
        if not claims:
            claims = await self.queue.claims.read_new(self.id, size, self.idle_block_ms)
        self._hold(claims)
        return claims

    async def _window_s(self, claims: list[Claim]) -> float:
        """How long the batch forming now waits for more tasks (worker/window.py), in seconds."""
        window_ms = self.settings.window_ms
        if self.settings.window_policy == "fixed":
            return window_ms / 1000
        first_ms = min(arrival_ms(c.entry_id) for c in claims)
        waited_ms = now_ms() - first_ms
        if waited_ms >= window_ms:  # it waits whatever the arrivals say: no need to read them
            return window_ms / 1000
        arrivals = await self.queue.claims.recent_arrivals()
        batch_ms = None if self.ahead.batch_s is None else self.ahead.batch_s * 1000
        return wait_ms(arrivals, first_ms, waited_ms, window_ms, batch_ms) / 1000

    def _hold(self, claims: list[Claim]) -> None:
        self.held.update((c.entry_id, c.task_id) for c in claims)

    def _forget(self, claims: list[Claim]) -> None:
        for claim in claims:
            self.held.pop(claim.entry_id, None)
            self.running.pop(claim.entry_id, None)

    # --- running ----------------------------------------------------------------------------

    async def _run_with_drain(self, claims: list[Claim], stop: asyncio.Event) -> list[Claim]:
        """Run a batch, reading the next one ahead near its end; returns the claims read ahead.

        Once stopping, the batch gets drain_s, then is cancelled (tasks are handed back)."""
        spawn(self._note_busy(), "note busy")  # concurrently with the batch's start
        self._idle_noted_at = 0.0
        tail = asyncio.Event()
        batch = asyncio.create_task(self._process(claims, tail), name="batch")
        ahead = asyncio.create_task(self.ahead.run(batch, tail, stop), name="read-ahead")
        try:
            await self._drain(batch, stop)
            return await ahead
        finally:
            batch.cancel()  # no-ops once they are done
            ahead.cancel()

    async def _drain(self, batch: asyncio.Task[None], stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({batch, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                log.info(
                    "stopping: letting the running batch finish (up to %.0f s)",
                    self.settings.drain_s,
                )
                await asyncio.wait({batch}, timeout=self.settings.drain_s)
            if not batch.done():
                log.warning("drain time over: cancelling the running batch")
                batch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batch
        finally:
            stopped.cancel()

    async def _process(self, claims: list[Claim], tail: asyncio.Event) -> None:
        """Start the claimed tasks, run them as one batch, then run failed ones alone."""
        began = time.monotonic()
        try:
            started = await self._start_all(claims)
            batch_id = uuid.uuid4().hex[:12]
            retry = await self.runner.run(started, batch_id, tail, self._ending) if started else []
            self.ahead.batch_ended(time.monotonic() - began)
            for task in retry:
                self.running.pop(task.entry_id, None)  # a failed attempt: it counts
                if task.entry_id not in self.held:
                    # Its lease lapsed (the heartbeat said so) and another worker may run it:
                    # START here would fence that worker out.
                    log.info(
                        "task %s not retried: no longer held by this worker",
                        task.task_id, extra={"task_id": task.task_id},
                    )  # fmt: skip
                    continue
                again = await self._start_all([Claim(task.entry_id, task.task_id)])
                if again:
                    await self.runner.run(again, f"{batch_id}-solo-{task.task_id[:8]}")
        except REDIS_UNAVAILABLE as exc:
            # Tasks stay in the pending list and are resumed once Redis is back; this worker
            # stops renewing them, so that they return after the lease (also to itself).
            log.error("Redis failed during a batch (%s); its tasks will be taken over", exc)
        except OutOfMemoryError as exc:
            # START writes, so a full Redis refuses it; no attempt was counted. The tasks return
            # after the lease, and are started once Redis has room again.
            log.warning("Redis is full (%s); tasks of this batch not started", exc)
        except RedisError:
            log.exception("unexpected Redis error during a batch")
        self._forget(claims)

    async def _note_busy(self) -> None:
        await self._ending_noted()
        with contextlib.suppress(RedisError, OSError):
            await self.queue.claims.note_busy(self.id)

    async def _note_idle(self) -> None:
        """Mark this worker idle in Redis (keys.idle), at most every _IDLE_NOTE_S."""
        if time.monotonic() - self._idle_noted_at < _IDLE_NOTE_S:
            return
        self._idle_noted_at = time.monotonic()  # one mark at a time, even while it is sent
        try:
            await self.queue.claims.note_idle(self.id, now_ms())
        except BaseException:
            self._idle_noted_at = 0.0  # the next call tries again
            raise

    def _ending(self) -> None:
        """The child has finished every task of the running batch, whose last writes go next:
        this worker is idle from now on, for the read-ahead of the others (worker/ahead.py).
        Marked after the batch instead, it was too late now and then: the requests that the
        batch's clients sent as their answers ended could be read ahead by a busy worker,
        which started one of them alone at its own batch's end while this one waited its window
        for the other three (docs/benchmarks.md, "A batch of one at c8")."""
        self._ending_note = asyncio.ensure_future(self._note_idle())

    async def _ending_noted(self) -> None:
        """Wait for the idle mark of _ending(), if one is on its way: Redis must not take it
        after a later busy mark, or after this worker left. Its failure is not this caller's:
        the next _note_idle tries again."""
        note, self._ending_note = self._ending_note, None
        if note is not None:
            await asyncio.wait({note})  # not cancelled with this caller
            if not note.cancelled():
                with contextlib.suppress(RedisError, OSError):
                    note.result()

    async def _start_all(self, claims: list[Claim]) -> list[StartedTask]:
        """Start the claimed tasks (concurrently: one round trip, not one per task), in order."""
        now = now_ms()
        results = await asyncio.gather(
            *(
                self.queue.tasks.start(
                    claim, worker=self.id, now_ms=now, max_attempts=self.settings.max_attempts
                )
                for claim in claims
            )
        )
        started = []
        for claim, result in zip(claims, results, strict=True):
            if isinstance(result, StartedTask):
                started.append(result)
                self.running[claim.entry_id] = result.attempt
                continue
            if result.outcome is StartOutcome.DEAD:
                metrics.TASKS_DEAD_LETTERED.inc()
            code = result.outcome.ended_task
            if code is not None:
                metrics.TASKS_FINISHED.labels("error", code).inc()
            self.held.pop(claim.entry_id, None)
            log.info(
                "task %s not run: %s",
                claim.task_id, result.outcome, extra={"task_id": claim.task_id},
            )  # fmt: skip
        return started

    # --- leases, health, shutdown ------------------------------------------------------------

    async def _renew_loop(self) -> None:
        """Renew the lease of the tasks this worker holds, every lease/3."""
        interval = self.settings.lease_ms / 3000
        while True:
            if self.held:  # else nothing to renew: no round trip that would tell Redis is up
                await self._renew()
            await asyncio.sleep(interval)

    async def _renew(self) -> None:
        try:
            lost = await self.queue.claims.renew(self.id, list(self.held))
        except (RedisError, OSError) as exc:
            # Any Redis error (down, out of memory, read-only after a failover): an uncaught
            # one would end this task silently, and with it every lease renewal.
            log.warning("lease renewal failed: %s", exc)
            return
        self._mark_redis_ok()
        for entry_id in lost:
            task_id = self.held.pop(entry_id, None)
            log.info(
                "task %s is no longer held by this worker", task_id, extra={"task_id": task_id}
            )
        if lost:
            self.runner.lose(lost)

    def _mark_redis_ok(self) -> None:
        self.redis_ok_at = time.monotonic()

    def _redis_recent(self) -> bool:
        return time.monotonic() - self.redis_ok_at < self.settings.lease_ms / 1000

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        redis_ok = self._redis_recent()
        detail: dict[str, object] = {
            "worker": self.id,
            "redis": redis_ok,
            "stopping": self.stopping,
            "held": len(self.held),
        }
        return redis_ok and not self.stopping, detail

    async def _hand_back(self, *, refund: bool) -> None:
        """Hand back every task still held, at once; with ``refund`` (an orderly stop), the
        attempts this worker started on them do not count against max_attempts."""
        if not self.held:
            return
        entries = list(self.held)
        refunded = 0
        if refund:
            try:
                refunded = await self._refund(entries)
            except (RedisError, OSError) as exc:  # e.g. a full Redis: the hand-back still goes on
                log.warning("could not refund the attempts handed back (%s); they count", exc)
        try:
            await self.queue.claims.release(self.id, entries, self.settings.lease_ms)
            log.info(
                "handed back %d task(s) for other workers (%d attempt(s) refunded)",
                len(entries), refunded,
            )  # fmt: skip
        except (RedisError, OSError) as exc:
            log.warning(
                "could not hand back %d task(s) (%s); they return after the lease",
                len(entries),
                exc,
            )
        self.held.clear()
        self.running.clear()

    async def _refund(self, entries: list[str]) -> int:
        """Refund the running attempts of these entries (HAND_BACK); how many were."""
        started = [(self.held[e], self.running[e]) for e in entries if e in self.running]
        results = await asyncio.gather(
            *(self.queue.tasks.hand_back(task_id, attempt) for task_id, attempt in started)
        )
        for (task_id, attempt), refunded in zip(started, results, strict=True):
            if refunded:
                log.info(
                    "task %s: attempt %d handed back on stop, not counted",
                    task_id, attempt, extra={"task_id": task_id},
                )  # fmt: skip
        return sum(results)
