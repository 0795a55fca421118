"""Running one batch: start the LLM child, relay its tokens to Redis as they appear, end tasks.

Phases: run the child → apply each chunk of output to the per-task state → flush new tokens and
finished tasks to Redis → on a child failure, decide per task between a retry on its own and an
error.

When a batch of several fails, every task it had not finished is retried alone, so that one
poison context fails by itself and its batch-mates complete. That holds for a task cut
mid-stream too: its retry takes the path of a takeover. The model answers a context the same
way every time, so the solo run regenerates the tokens already written, APPEND skips them (it
writes from `tokens` on), and only the new ones reach the client: no duplicate, no gap. The
retry is a new attempt (START), fenced like any other, so retries are bounded by max_attempts:
a task already at its last attempt is not retried but ends with the error. A task that fails
on its own ends with an error naming the cause, never with a silently truncated answer.

A Redis that refuses writes for lack of memory (maxmemory under noeviction) is waited for,
with backoff, up to ``redis_full_wait_s``; past that the task ends with `redis_full` (the
scripts that end a task run even then: protocol/scripts.py), so that its stream ends instead of
waiting for its deadline, and the worker goes on with the rest of its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import OutOfMemoryError

from llm_batcher import metrics
from llm_batcher.clock import now_ms
from llm_batcher.codec import ChildLine, TokenLine
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from llm_batcher.settings import WorkerSettings
from llm_batcher.worker.child import ChildFailure, FailureCause, LlmChild
from llm_batcher.worker.spare import make_launcher
from llm_batcher.worker.stops import StopScan

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TaskRun:
    """One task's progress within one batch."""

    task: StartedTask
    parts: list[str] = field(default_factory=list)  # every token of this attempt
    pending: list[str] = field(default_factory=list)  # tokens not yet in Redis
    finished: bool = False  # the child said this context is complete, or the worker ended it
    capped: bool = False  # ended by a limit: the child's further output for it is dropped
    finish_reason: str = "stop"  # `length`: cut at max_tokens
    closed: bool = False  # nothing more to do: terminal written, or no longer ours
    first_token_ms: int | None = None
    in_redis: int = 0  # tokens of this task in its result stream, as last reported by Redis
    max_tokens: int = 0  # the cap on this answer: the task's own, at most the worker's
    received: int = 0  # tokens the child wrote for this task (some may be held back)
    stops: StopScan | None = None  # the task's stop sequences, if it has any

    @classmethod
    def of(cls, task: StartedTask, max_tokens: int) -> TaskRun:
        """A run of ``task`` capped at its own max_tokens, at most the worker's ``max_tokens``."""
        return cls(
            task,
            first_token_ms=task.first_token_ms,
            in_redis=task.tokens_written,
            max_tokens=min(task.max_tokens or max_tokens, max_tokens),
            stops=StopScan(task.stop) if task.stop else None,
        )

    @property
    def produced(self) -> int:
        return len(self.parts)

    def take(self, token: str) -> None:
        """One token from the child: relay it (unless a stop sequence may begin in it), and
        end the answer at a stop sequence or at the cap."""
        self.received += 1
        tokens, stopped = ([token], False) if self.stops is None else self.stops.feed(token)
        if not stopped and self.received >= self.max_tokens:
            tokens += self.stops.flush() if self.stops is not None else []
            self.finish_reason = "length"
        self.parts += tokens
        self.pending += tokens
        if stopped or self.received >= self.max_tokens:
            self.finished = self.capped = True

    def end(self) -> None:
        """The child finished this context: relay what was held back."""
        if self.stops is not None:
            tokens = self.stops.flush()
            self.parts += tokens
            self.pending += tokens
        self.finished = True

    @property
    def visible_tokens(self) -> int:
        """Tokens clients may already have seen (earlier attempts included)."""
        return self.in_redis


class BatchRunner:
    """Runs batches for one worker."""

    def __init__(self, queue: TaskQueue, settings: WorkerSettings) -> None:
        self.queue = queue
        self.settings = settings
        self.launcher = make_launcher(settings)
        # the running batch's runs, and the scope that stops it once none of them is ours
        self._running: tuple[list[TaskRun], asyncio.Timeout] | None = None

    def open(self) -> None:
        """Start what runs between batches (a spare LLM child, if the settings keep one)."""
        self.launcher.open()

    async def close(self) -> None:
        """Stop and reap what runs between batches."""
        await self.launcher.close()

    async def run(
        self,
        tasks: list[StartedTask],
        batch_id: str,
        tail: asyncio.Event | None = None,
        ending: Callable[[], None] | None = None,
    ) -> list[StartedTask]:
        """Run one batch to its end; returns the tasks to retry, each in a batch of its own.

        ``tail`` is set when the first task of the batch is complete; ``ending`` is called once
        the child has finished every task, before their last writes (nothing is retried then:
        the batch ends as soon as they are written)."""
        runs = [TaskRun.of(t, self.settings.max_tokens) for t in tasks]
        log.info(
            "batch %s: running %d task(s): %s",
            batch_id, len(runs), " ".join(t.task_id for t in tasks),
            extra={"batch_id": batch_id},
        )  # fmt: skip
        started = time.monotonic()
        metrics.BATCH_SIZE.observe(len(runs))
        try:
            async with (
                self._losable(runs) as gone,
                LlmChild.run(
                    self.launcher,
                    [t.context for t in tasks],
                    tmp_root=self.settings.tmp_dir,
                    timeout_s=self.settings.batch_timeout_s,
                ) as child,
            ):
                async for lines in child.chunks():
                    _apply(runs, lines)
                    if tail is not None and any(r.finished for r in runs):
                        tail.set()
                    if ending is not None and all(r.finished or r.closed for r in runs):
                        ending()  # the loop ends after this flush: called once
                    await self._flush(runs, batch_id)
                    if all(r.closed for r in runs):
                        # Every answer is written, or every task left was taken from this worker
                        # (lease lost, or lost with a Redis restart): the batch is over. Its LLM
                        # is stopped rather than awaited: its exit would add nothing.
                        if not all(r.finished for r in runs):
                            _log_none_ours(batch_id)
                        break
            if not all(r.finished or r.closed for r in runs):
                raise ChildFailure(
                    FailureCause.TRUNCATED, "the LLM exited without finishing every context"
                )
        except TimeoutError:
            if not gone.expired():
                raise
            _log_none_ours(batch_id)  # lose() stopped it
        except ChildFailure as failure:
            metrics.BATCH_DURATION.observe(time.monotonic() - started)
            metrics.LLM_FAILURES.labels(failure.cause).inc()
            await self._flush(runs, batch_id)
            return await self._fail(runs, failure, batch_id)
        metrics.BATCH_DURATION.observe(time.monotonic() - started)
        log.info(
            "batch %s: done in %.0f ms",
            batch_id, (time.monotonic() - started) * 1000, extra={"batch_id": batch_id},
        )  # fmt: skip
        return []

    @contextlib.asynccontextmanager
    async def _losable(self, runs: list[TaskRun]) -> AsyncIterator[asyncio.Timeout]:
        """While the batch runs, lose() may end it: the scope expires, the LLM is stopped."""
        async with asyncio.timeout(None) as gone:
            self._running = (runs, gone)
            try:
                yield gone
            finally:
                self._running = None

    def lose(self, entry_ids: Collection[str]) -> None:
        """Tasks this worker no longer holds (its lease renewal says so: taken over while it was
        paused or starved, or ended): drop their output, and once no task of the running batch
        is left, stop its LLM at once. Refused writes would stop it too, but only at its next
        output, which an LLM in a long prefill, or hung, may not write before the batch
        deadline; meanwhile this worker would serve nothing."""
        if self._running is None:
            return
        runs, gone = self._running
        for run in runs:
            # A finished run's `done` may be on its way (its FINISH is what removed the entry):
            # it closes when that write returns, refused or not.
            if run.task.entry_id in entry_ids and not (run.closed or run.finished):
                run.closed = True
                log.warning(
                    "task %s is no longer this worker's (not held); dropping its output",
                    run.task.task_id, extra={"task_id": run.task.task_id},
                )  # fmt: skip
        if all(r.closed for r in runs) and not all(r.finished for r in runs):
            gone.reschedule(asyncio.get_running_loop().time())

    async def _flush(self, runs: list[TaskRun], batch_id: str) -> None:
        """Write new tokens, then the `done` of every task the child finished: the last tokens
        of a task and its `done` in one round trip."""
        batch_size = len(runs)
        await asyncio.gather(
            *(
                self._append(r, batch_size, batch_id)
                if r.pending
                else self._done(r, batch_size, batch_id)
                for r in runs
                if not r.closed and (r.pending or r.finished)
            )
        )

    async def _append(self, run: TaskRun, batch_size: int, batch_id: str) -> None:
        """Write the run's new tokens, and its `done` with them if the child finished it."""
        tokens, run.pending = run.pending, []
        first_index = run.produced - len(tokens)
        stamp = now_ms()
        tasks, task = self.queue.tasks, run.task
        try:
            if run.finished:
                summary = self._summary(run, batch_size, batch_id, stamp)
                appended, _ = await self._retrying(
                    lambda: tasks.append_and_complete(task, first_index, tokens, stamp, summary),
                    task.task_id,
                )
            else:
                appended = await self._retrying(
                    lambda: tasks.append(task, first_index, tokens, stamp), task.task_id
                )
        except OutOfMemoryError as exc:
            await self._redis_full(run, batch_id, exc)
            return
        if not appended.result.ours:
            run.closed = True
            log.warning(
                "task %s is no longer this worker's (%s); dropping its output",
                task.task_id, appended.result, extra={"task_id": task.task_id},
            )  # fmt: skip
            return
        written = appended.tokens
        if written > run.in_redis:
            metrics.TOKENS_RELAYED.inc(written - run.in_redis)
            run.in_redis = written
        if run.first_token_ms is None:
            run.first_token_ms = stamp
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s: tokens %d..%d relayed",
                task.task_id, first_index, first_index + len(tokens) - 1,
                extra={"task_id": task.task_id},
            )  # fmt: skip
        if run.finished:
            self._ended(run, batch_id, summary)

    async def _done(self, run: TaskRun, batch_size: int, batch_id: str) -> None:
        """Write the `done` of a run whose tokens are all written."""
        summary = self._summary(run, batch_size, batch_id, now_ms())
        try:
            await self._retrying(
                lambda: self.queue.tasks.complete(run.task, summary), run.task.task_id
            )
        except OutOfMemoryError as exc:
            await self._redis_full(run, batch_id, exc)
            return
        self._ended(run, batch_id, summary)

    async def _redis_full(self, run: TaskRun, batch_id: str, exc: OutOfMemoryError) -> None:
        """Redis refused the run's writes for redis_full_wait_s: end its task with `redis_full`."""
        log.error(
            "task %s: Redis refused its tokens for %.0f s: %s",
            run.task.task_id, self.settings.redis_full_wait_s, exc,
            extra={"task_id": run.task.task_id, "batch_id": batch_id},
        )  # fmt: skip
        message = (
            f"Redis is full: the answer could not be written after {run.visible_tokens} tokens; "
            f"see the worker log of batch {batch_id}"
        )
        await self._end_with_error(run, ErrorCode.REDIS_FULL, message, batch_id)

    async def _end_with_error(
        self, run: TaskRun, code: ErrorCode, message: str, batch_id: str
    ) -> None:
        """End the run's task with an `error` (FINISH runs even on a full Redis)."""
        await self._retrying(
            partial(self.queue.tasks.fail, run.task, code, message), run.task.task_id
        )
        run.closed = True
        metrics.TASKS_FINISHED.labels("error", code).inc()
        log.warning(
            "task %s failed: %s: %s",
            run.task.task_id, code, message,
            extra={"task_id": run.task.task_id, "batch_id": batch_id},
        )  # fmt: skip

    def _summary(self, run: TaskRun, batch_size: int, batch_id: str, end_ms: int) -> dict[str, Any]:
        """The data of the run's `done` event, as if it ended at ``end_ms``."""
        task = run.task
        return {
            "task_id": task.task_id,
            "text": "".join(run.parts),
            "tokens": run.produced,
            "batch_size": batch_size,
            "queue_ms": task.started_ms - task.created_ms,
            "ttft_ms": (run.first_token_ms or end_ms) - task.created_ms,
            "total_ms": end_ms - task.created_ms,
            "attempt": task.attempt,
            "worker": self.settings.worker_id,
            "batch_id": batch_id,
            "finish_reason": run.finish_reason,
        }

    def _ended(self, run: TaskRun, batch_id: str, summary: dict[str, Any]) -> None:
        run.closed = True
        metrics.TASKS_FINISHED.labels("done", "").inc()
        log.info(
            "task %s done: %d tokens, total %d ms",
            run.task.task_id, run.produced, summary["total_ms"],
            extra={"task_id": run.task.task_id, "batch_id": batch_id},
        )  # fmt: skip

    async def _retrying(self, call: Callable[[], Awaitable[T]], task_id: str) -> T:
        """A write of the task's answer, retried (module function _retrying)."""
        return await _retrying(call, task_id, full_wait_s=self.settings.redis_full_wait_s)

    async def _fail(
        self, runs: list[TaskRun], failure: ChildFailure, batch_id: str
    ) -> list[StartedTask]:
        code = failure.cause.error_code
        # What the child wrote stays in this log: clients get the batch id to quote.
        log.warning(
            "batch %s: the LLM failed (%s): %s%s",
            batch_id, failure.cause, failure.message, failure.detail, extra={"batch_id": batch_id},
        )  # fmt: skip
        retry: list[StartedTask] = []
        cut = 0  # of them, tasks cut mid-stream
        for run in (r for r in runs if not r.closed):
            if len(runs) > 1 and run.task.counted < self.settings.max_attempts:
                retry.append(run.task)  # cut mid-stream or not: the solo run resumes it
                cut += run.visible_tokens > 0
                continue
            message = (
                f"{failure.message}; see the worker log of batch {batch_id} "
                f"(after {run.visible_tokens} tokens)"
            )
            await self._end_with_error(run, code, message, batch_id)
        if retry:
            metrics.TASKS_RETRIED.inc(len(retry))
            log.warning(
                "batch %s failed (%s); retrying %d task(s) each alone (%d cut mid-stream)",
                batch_id, failure.cause, len(retry), cut,
                extra={"batch_id": batch_id},
            )  # fmt: skip
        return retry


def _log_none_ours(batch_id: str) -> None:
    log.info(
        "batch %s: no task is this worker's any more; stopping it",
        batch_id,
        extra={"batch_id": batch_id},
    )


def _apply(runs: list[TaskRun], lines: list[ChildLine]) -> None:
    """Apply decoded output lines to the runs; a token after `finish` breaks the protocol. A
    task that reaches its cap or a stop sequence is finished there, and what the child writes
    for it after is dropped: the child runs on for the other contexts of its batch."""
    for line in lines:
        run = runs[line.index]
        if run.capped:
            continue
        if run.finished:
            raise ChildFailure(
                FailureCause.BAD_OUTPUT, f"output for context {line.index} after its finish"
            )
        if isinstance(line, TokenLine):
            run.take(line.token)
        else:
            run.end()


async def _retrying(
    call: Callable[[], Awaitable[T]], task_id: str, *, full_wait_s: float, budget_s: float = 30.0
) -> T:
    """Run a Redis write, retrying through a short outage (for budget_s), and while Redis refuses
    writes for lack of memory (for full_wait_s; then OutOfMemoryError); every script here is
    idempotent."""
    delay, start = 0.05, time.monotonic()
    while True:
        try:
            return await call()
        except OutOfMemoryError as exc:
            if time.monotonic() + delay > start + full_wait_s:
                raise
            what = f"Redis is full ({exc})"
        except REDIS_UNAVAILABLE as exc:
            if time.monotonic() + delay > start + budget_s:
                raise
            what = f"Redis unavailable ({exc})"
        log.warning(
            "%s writing task %s; retrying in %.2f s",
            what, task_id, delay, extra={"task_id": task_id},
        )  # fmt: skip
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
