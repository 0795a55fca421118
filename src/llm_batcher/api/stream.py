"""The SSE stream of one task: `task`, then `token`s in order, then one `done` or `error`.

Tokens reach the stream from two sources: pub/sub announcements (fast path) and reads of the
task's result stream (backfill: at the start, after a resume, after a reconnect, or when an
announcement shows a gap). Entry ids are positions, so both paths merge by index: an entry below
the next expected index is a duplicate and is skipped; one above it means something was missed
and triggers a backfill. Nothing is held back to group tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from llm_batcher import contract, metrics
from llm_batcher.api.hub import CLOSE, GONE, RESYNC, ResultHub, Subscription
from llm_batcher.background import spawn
from llm_batcher.clock import now_ms
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import RESULT_PAGE_ENTRIES, ResultEntry
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)

_OUTAGE_LIMIT_S = 10.0  # Redis unreachable for this long ends the stream with an error
PING = b": ping\r\n\r\n"
"""An SSE comment, sent on an idle stream every ping_s so that proxies keep it open."""


class _Closed(Exception):
    """The server is shutting down: end the stream without a terminal event."""


@dataclass
class StreamState:
    task_id: str
    next_index: int  # index of the next token to send
    deadline_ms: int
    terminal_sent: bool = False
    created_here: bool = False  # this request submitted the task (so may cancel it)
    keyed: bool = False  # submitted with an Idempotency-Key: its client will retry, not cancel
    sub: Subscription | None = None  # subscribed before the task was queued (ResultHub.open_ahead)
    announced_from_start: bool = False  # ...and Redis held that subscription when it queued it

    @property
    def cancels_on_hangup(self) -> bool:
        """Whether the task ends `cancelled` if this client hangs up before a worker starts it."""
        return self.created_here and not self.keyed


def _wire(events: list[contract.Event]) -> bytes:
    """The SSE frames of these events, in one chunk (one write)."""
    return "".join(map(contract.encode, events)).encode()


class Encoder(Protocol):
    """A wire format of a task's stream: /generate's SSE events, or OpenAI's chunks."""

    ping: bytes
    """What an idle stream sends every ping_s (b"": nothing)."""

    def frames(self, events: list[contract.Event]) -> bytes:
        """The bytes of these events, sent in one write (b"": nothing to send)."""
        ...


class GenerateEncoder:
    """/generate's wire format: the contract's SSE events as they are."""

    ping = PING
    frames = staticmethod(_wire)  # _wire itself: no extra call per chunk on the hot path


GENERATE = GenerateEncoder()


class TaskStream:
    """Produces the stream of one task for one client, in the wire format of its encoder;
    ``endpoint`` labels the request in the metrics."""

    def __init__(
        self,
        queue: TaskQueue,
        hub: ResultHub,
        settings: ApiSettings,
        state: StreamState,
        encoder: Encoder = GENERATE,
        endpoint: str = "generate",
    ) -> None:
        self.queue = queue
        self.hub = hub
        self.settings = settings
        self.state = state
        self.sub: Subscription | None = state.sub
        self._started = False  # events() has begun (and its own cleanup will run)
        self.encoder = encoder
        self.endpoint = endpoint
        self._outage_since: float | None = None
        self._more = False  # the last backfill filled a page: read on before waiting

    async def events(self) -> AsyncGenerator[bytes, None]:
        """The whole stream, as SSE frames; events that are ready together leave in one write.
        On a client disconnect before any token, cancel the task this request queued."""
        state = self.state
        outcome = "disconnected"
        self._started = True
        encode = self.encoder.frames
        metrics.OPEN_STREAMS.inc()
        try:
            yield encode(
                [contract.task_event(state.task_id, state.next_index - 1, self.settings.retry_ms)]
            )
            sub, events = await self._subscribe()
            while not state.terminal_sent:
                if events:
                    yield encode(events)
                # Everything announced meanwhile is taken at once; nothing waits for company.
                events = []
                if self._more:  # a long answer is read page by page, each sent on its own
                    events = self._emit(await self._backfill())
                    continue
                items = await sub.get_ready(self._wait_s())
                if items == [None] and not self._deadline_passed():
                    yield self.encoder.ping  # a silence; the hub checks the task exists
                    continue
                for item in items:
                    events += self._emit(await self._next(item))
                    if state.terminal_sent:
                        break
            yield encode(events)
        except _Closed:
            outcome = "closed"
            log.info(
                "stream of task %s closed for shutdown",
                state.task_id,
                extra={"task_id": state.task_id},
            )
        except REDIS_UNAVAILABLE as exc:
            yield encode([self._error(ErrorCode.REDIS_UNAVAILABLE, f"Redis is unreachable: {exc}")])
        finally:
            self.close()
            metrics.OPEN_STREAMS.dec()
            gone_before_start = state.cancels_on_hangup and state.next_index == 0
            if gone_before_start and not state.terminal_sent and not self.hub.closing:
                outcome = "cancelled"
                self._cancel_in_background()
            if not state.terminal_sent:
                metrics.REQUESTS.labels(outcome, "", self.endpoint).inc()

    def close(self) -> None:
        """End the subscription (again: nothing). For a response that ended before its events
        began, also cancel the task this request queued: nobody will read it."""
        if self.sub is not None:
            self.hub.close(self.sub)
        if not self._started and self.state.cancels_on_hangup and not self.hub.closing:
            self._started = True  # once
            self._cancel_in_background()

    def _cancel_in_background(self) -> None:
        """Cancel the task in the background: the client has gone, this coroutine is ending."""
        task_id = self.state.task_id
        spawn(self.queue.tasks.cancel(task_id), f"cancel {task_id}")

    # --- phases -----------------------------------------------------------------------------

    async def _subscribe(self) -> tuple[Subscription, list[contract.Event]]:
        """The task's subscription, in place in Redis, and the entries written before it."""
        state, timeout_s = self.state, self.settings.redis_timeout_s * 5
        if state.sub is None:
            sub = self.sub = await self.hub.open(state.task_id, timeout_s)
        elif state.announced_from_start:
            return state.sub, []  # every entry of the task will be announced to it
        else:
            sub = state.sub
            await self.hub.confirmed(sub, timeout_s)
        # A task this request has just queued cannot have expired: no existence check.
        return sub, self._emit(await self._backfill(known_to_exist=state.created_here))

    async def _next(self, item: ResultEntry | str | None) -> list[ResultEntry]:
        """Turn what the subscription gave into entries to emit (reading Redis when needed)."""
        if item == CLOSE:
            raise _Closed
        if item is None:  # the deadline has passed: end the task unless it has ended
            await self.queue.tasks.expire(self.state.task_id, "the task did not finish in time")
            return await self._backfill()
        if item in (RESYNC, GONE) or not isinstance(item, ResultEntry):
            return await self._backfill()
        if item.is_terminal or item.index == self.state.next_index:
            if not item.is_terminal or self._complete(item):
                return [item]
            return await self._backfill()
        if item.index < self.state.next_index:
            return []  # already sent (it came through the backfill)
        return await self._backfill()  # a gap: an announcement was missed

    def _complete(self, terminal: ResultEntry) -> bool:
        """Whether every token before this terminal entry was sent."""
        data = terminal.data or {}
        return terminal.kind == "done" and data.get("tokens") == self.state.next_index

    async def _backfill(self, *, known_to_exist: bool = False) -> list[ResultEntry]:
        """Read the result stream after the last sent token; notice lost tasks and outages."""
        while True:
            try:
                results = self.queue.results
                entries = await results.after(self.state.task_id, self.state.next_index - 1)
                if not (entries or known_to_exist or await results.task_exists(self.state.task_id)):
                    return [_lost_entry()]
                self.hub.liveness.answered()
                self._outage_since = None
                self._more = len(entries) == RESULT_PAGE_ENTRIES
                return entries
            except REDIS_UNAVAILABLE:
                now = time.monotonic()
                self._outage_since = self._outage_since or now
                if now - self._outage_since > _OUTAGE_LIMIT_S or self.hub.closing:
                    raise
                await asyncio.sleep(0.25)

    def _emit(self, entries: list[ResultEntry]) -> list[contract.Event]:
        """The events of these entries, in order: duplicates skipped, the terminal one last."""
        events = []
        state = self.state
        for entry in entries:
            if entry.is_terminal:
                state.terminal_sent = True
                events.append(self._terminal(entry))
                break
            if entry.index != state.next_index:
                continue  # a duplicate (< next); a gap (> next) cannot come from a range read
            events.append(contract.token_event(state.task_id, entry.index, entry.text))
            state.next_index += 1
        tokens = len(events) - int(state.terminal_sent)
        if tokens:
            metrics.TOKENS_SENT.inc(tokens)
        return events

    def _terminal(self, entry: ResultEntry) -> contract.Event:
        data = entry.data or {}
        metrics.REQUESTS.labels(entry.kind, data.get("code") or "", self.endpoint).inc()
        if entry.kind == "done" and self.state.created_here:
            _observe_latencies(data)
        log.info(
            "task %s ended: %s %s", self.state.task_id, entry.kind,
            data.get("code") or f"{data.get('tokens')} tokens in {data.get('total_ms')} ms",
            extra={"task_id": self.state.task_id},
        )  # fmt: skip
        return contract.Event(contract.EventKind(entry.kind), data)

    def _error(self, code: ErrorCode, message: str) -> contract.Event:
        self.state.terminal_sent = True
        metrics.REQUESTS.labels("error", code, self.endpoint).inc()
        log.warning(
            "task %s: %s: %s",
            self.state.task_id,
            code,
            message,
            extra={"task_id": self.state.task_id},
        )
        return contract.error_event(code, message)

    def _wait_s(self) -> float:
        """Until the next ping or the deadline, whichever comes first."""
        to_deadline = (self.state.deadline_ms - now_ms()) / 1000
        return max(0.0, min(self.settings.ping_s, to_deadline))

    def _deadline_passed(self) -> bool:
        return now_ms() + 1 >= self.state.deadline_ms  # a timer may fire up to 1 ms early


def _observe_latencies(data: dict[str, object]) -> None:
    for histogram, field in (
        (metrics.TTFT, "ttft_ms"),
        (metrics.REQUEST_DURATION, "total_ms"),
        (metrics.QUEUE_WAIT, "queue_ms"),
    ):
        value = data.get(field)
        if isinstance(value, int | float):
            histogram.observe(value / 1000)


def _lost_entry() -> ResultEntry:
    message = "the task is unknown to Redis: it expired, or Redis lost its data in a restart"
    return ResultEntry(
        TERMINAL_ENTRY_ID, "error", data={"code": ErrorCode.LOST, "message": message}
    )
