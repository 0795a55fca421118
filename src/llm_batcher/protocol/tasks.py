"""The task state machine: queued -> running -> done | error, one Lua script per change.

The API submits, cancels and expires tasks; a worker starts its claims, appends tokens and ends
its tasks. Every write of a worker carries its attempt number (a fencing token, scripts.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from llm_batcher.protocol.claims import Claim, Claims
from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.outcomes import (
    ErrorCode,
    StartOutcome,
    SubmitOutcome,
    TaskState,
    WriteResult,
)
from llm_batcher.protocol.scripts import Script

PREVIEW_CHARS = 80
"""How much of a context /stats shows (then an ellipsis)."""


def context_preview(context: str) -> str:
    """What /stats shows of a context."""
    return context if len(context) <= PREVIEW_CHARS else context[:PREVIEW_CHARS] + "…"


def error_data(code: ErrorCode, message: str) -> str:
    """The JSON of a terminal `error` entry."""
    return json.dumps({"code": code.value, "message": message}, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Once:
    """The idempotency key of a submit: its Redis key (keys.Keys.idempotency), and the
    fingerprint of the request, which a retry with the same key must match."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A submit that queued its task. ``subscribed_first``: Redis held the client's subscription
    to the task's result channel when it queued the task, so every announcement of the task
    reaches that subscriber, and nothing was written before it that it must read from the
    stream."""

    subscribed_first: bool = False


@dataclass(frozen=True, slots=True)
class Submitted:
    """What submit_once did: the task the request gets (a new one, or the key's), its deadline."""

    outcome: SubmitOutcome
    task_id: str
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class StartedTask:
    """A task a worker may run: START said `run`."""

    task_id: str
    entry_id: str
    attempt: int
    context: str
    tokens_written: int
    created_ms: int
    started_ms: int
    first_token_ms: int | None
    counted: int  # attempts that count against max_attempts, this one included (hand_back)
    max_tokens: int | None = None  # the request's cap on the answer (the worker's may be lower)
    stop: tuple[str, ...] = ()  # stop sequences: the answer ends before the first one


@dataclass(frozen=True, slots=True)
class Refused:
    """START did not let the worker run the task, and why."""

    outcome: StartOutcome


@dataclass(frozen=True, slots=True)
class Appended:
    """What APPEND did: the tokens now in the answer, if the task is still this attempt's."""

    result: WriteResult
    tokens: int = 0


class Tasks:
    """Every change of a task's state."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: dict[Script, AsyncScript],
        claims: Claims,
        *,
        result_ttl_s: float,
        stats_window_s: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = scripts
        self._claims = claims
        self.ttl_ms = int(result_ttl_s * 1000)
        self.stats_window_ms = int(stats_window_s * 1000)

    # --- API side ---------------------------------------------------------------------------

    async def submit(
        self,
        task_id: str,
        context: str,
        *,
        now_ms: int,
        deadline_ms: int,
        max_queue: int,
        owner: str = "",
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        subscribed: bool = False,
    ) -> Queued | None:
        """Queue a task; None (and nothing queued) when max_queue tasks are queued or running.
        ``owner``: the hash of the API key that submitted it, if keys are on; ``max_tokens`` and
        ``stop``: limits of this answer, which the worker enforces; ``subscribed``: the caller
        subscribed to the task's result channel before this call, and learns whether Redis
        already held that subscription (Queued.subscribed_first)."""
        keys, args = self._submit_call(task_id, context, now_ms, deadline_ms, max_queue, owner)
        args += self._limit_args(max_tokens, stop)
        if subscribed:
            args += ["", self._keys.result(task_id)]  # no fingerprint: not a keyed submit
        reply = await self._scripts[Script.SUBMIT](keys=keys, args=args)
        if not reply:
            return None
        return Queued(subscribed_first=subscribed and int(reply[1]) > 0)

    async def submit_once(
        self,
        once: Once,
        task_id: str,
        context: str,
        *,
        now_ms: int,
        deadline_ms: int,
        max_queue: int,
        owner: str = "",
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> Submitted:
        """submit, for a request with an idempotency key: queues ``task_id`` unless the key
        already names a task Redis knows (then that one, or a conflict for another request)."""
        keys, args = self._submit_call(task_id, context, now_ms, deadline_ms, max_queue, owner)
        args += [*self._limit_args(max_tokens, stop), once.fingerprint]
        reply = await self._scripts[Script.SUBMIT](keys=[*keys, once.key], args=args)
        outcome = SubmitOutcome(reply_text(reply[0]))
        if outcome is SubmitOutcome.EXISTING:
            return Submitted(outcome, reply_text(reply[1]), int(reply[2]))
        if outcome is SubmitOutcome.CONFLICT:
            return Submitted(outcome, reply_text(reply[1]), 0)
        return Submitted(outcome, task_id, deadline_ms)

    def _submit_call(
        self,
        task_id: str,
        context: str,
        now_ms: int,
        deadline_ms: int,
        max_queue: int,
        owner: str,
    ) -> tuple[list[str], list[str | int]]:
        preview = context_preview(context)
        args: list[str | int] = [task_id, context, now_ms, deadline_ms, max_queue, self.ttl_ms]
        args += [preview, owner]
        keys = [self._keys.tasks, self._keys.task(task_id), self._keys.arrivals]
        return keys, args

    @staticmethod
    def _limit_args(max_tokens: int | None, stop: Sequence[str]) -> list[str | int]:
        return [
            "" if max_tokens is None else max_tokens,
            json.dumps(list(stop), ensure_ascii=False) if stop else "",
        ]

    async def cancel(self, task_id: str) -> bool:
        """End a task that no worker has started with error `cancelled`; False if it had started."""
        return await self._abort_if(
            task_id, [TaskState.QUEUED], ErrorCode.CANCELLED, "the client went away"
        )

    async def expire(self, task_id: str, message: str) -> bool:
        """End a task that has not finished with error `timeout`; False if it had finished."""
        states = [TaskState.QUEUED, TaskState.RUNNING]
        return await self._abort_if(task_id, states, ErrorCode.TIMEOUT, message)

    async def _abort_if(
        self, task_id: str, states: list[TaskState], code: ErrorCode, message: str
    ) -> bool:
        data = error_data(code, message)
        args: list[str | int] = [
            ",".join(states),
            code.value,
            data,
            self.ttl_ms,
            task_id,
            self.stats_window_ms,
        ]
        return bool(await self._scripts[Script.ABORT](keys=self._ending_keys(task_id), args=args))

    # --- worker side ------------------------------------------------------------------------

    async def start(
        self, claim: Claim, *, worker: str, now_ms: int, max_attempts: int
    ) -> StartedTask | Refused:
        """Begin an attempt: a StartedTask, or why not (missing, final, not held by ``worker``,
        timeout, dead)."""
        task_id = claim.task_id
        keys = [
            self._keys.task(task_id),
            self._keys.result(task_id),
            self._keys.tasks,
            self._keys.dead,
            self._keys.dead_letters,
            self._keys.stats,
        ]
        timeout = error_data(
            ErrorCode.TIMEOUT, "the task's deadline passed before a worker started it"
        )
        dead = error_data(ErrorCode.DEAD_LETTER, f"the task was delivered {max_attempts} times")
        window = self.stats_window_ms
        args: list[str | int] = [now_ms, max_attempts, worker, self.ttl_ms, timeout, dead]
        args += [task_id, claim.entry_id, window]  # the stats window last (ending.lua)
        reply = await self._scripts[Script.START](keys=keys, args=args)
        outcome = StartOutcome(reply_text(reply[0]))
        if outcome is not StartOutcome.RUN:
            if outcome is StartOutcome.MISSING:  # expired or lost with a Redis restart
                await self._claims.drop(claim)
            return Refused(outcome)
        _, attempt, context, tokens, created, started, first, max_tokens, stop, counted = reply
        return StartedTask(
            task_id=task_id,
            entry_id=claim.entry_id,
            attempt=int(attempt),
            context=reply_text(context),
            tokens_written=int(tokens),
            created_ms=int(created),
            started_ms=int(started),
            first_token_ms=int(first) if first else None,
            max_tokens=int(max_tokens) if max_tokens else None,
            stop=tuple(json.loads(reply_text(stop))) if stop else (),
            counted=int(counted),
        )

    async def hand_back(self, task_id: str, attempt: int) -> bool:
        """Refund a running attempt that this worker gives up because it stops in order (drain),
        so that it does not count against max_attempts; False if the task ended or moved on."""
        script = self._scripts[Script.HAND_BACK]
        return bool(await script(keys=[self._keys.task(task_id)], args=[attempt]))

    async def append(
        self, task: StartedTask, first_index: int, tokens: list[str], now_ms: int
    ) -> Appended:
        """Write tokens from position first_index on (those already written are skipped)."""
        keys, args = self._append_call(task, first_index, tokens, now_ms)
        return _appended(await self._scripts[Script.APPEND](keys=keys, args=args))

    async def complete(self, task: StartedTask, summary: dict[str, Any]) -> WriteResult:
        """End this attempt's task with `done`; ``summary`` is the done event's data."""
        return await self._finish(task, TaskState.DONE, "", json.dumps(summary, ensure_ascii=False))

    async def append_and_complete(
        self,
        task: StartedTask,
        first_index: int,
        tokens: list[str],
        now_ms: int,
        summary: dict[str, Any],
    ) -> tuple[Appended, WriteResult]:
        """append, then complete, in one round trip: a task's last tokens and its `done` are
        announced together, and its client gets them in one write."""
        keys, args = self._append_call(task, first_index, tokens, now_ms)
        data = json.dumps(summary, ensure_ascii=False)
        calls = [
            (self._scripts[Script.APPEND], keys, args),
            (
                self._scripts[Script.FINISH],
                self._ending_keys(task.task_id),
                self._finish_args(task, TaskState.DONE, "", data),
            ),
        ]
        appended, finished = await self._pipelined(calls)
        return _appended(appended), WriteResult(reply_text(finished[0]))

    async def _pipelined(
        self, calls: list[tuple[AsyncScript, list[str], list[str | int]]]
    ) -> list[Any]:
        """Scripts run in order in one round trip, by SHA.

        A pipeline of redis-py Script objects first asks SCRIPT EXISTS, a round trip of its own,
        every time. Here a script missing from the cache (Redis restarted or flushed it) is
        loaded and the whole call made again: every script here is safe to repeat, and a FINISH
        whose APPEND was refused for NOSCRIPT refuses to write a `done` (`incomplete`)."""
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            missing = [c[0] for c, r in zip(calls, replies, strict=True) if _no_script(r)]
            if not missing:
                break
            if attempt:
                raise NoScriptError(f"scripts missing after loading them: {missing}")
            for script in missing:
                await self._redis.script_load(script.script)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies)

    def _append_call(
        self, task: StartedTask, first_index: int, tokens: list[str], now_ms: int
    ) -> tuple[list[str], list[str | int]]:
        keys = [self._keys.task(task.task_id), self._keys.result(task.task_id)]
        return keys, [task.attempt, now_ms, first_index, self.ttl_ms, *tokens]

    async def fail(self, task: StartedTask, code: ErrorCode, message: str) -> WriteResult:
        """End this attempt's task with `error`."""
        return await self._finish(task, TaskState.ERROR, code.value, error_data(code, message))

    async def _finish(
        self, task: StartedTask, state: TaskState, code: str, data: str
    ) -> WriteResult:
        keys = self._ending_keys(task.task_id)
        reply = await self._scripts[Script.FINISH](
            keys=keys, args=self._finish_args(task, state, code, data)
        )
        return WriteResult(reply_text(reply[0]))

    def _finish_args(
        self, task: StartedTask, state: TaskState, code: str, data: str
    ) -> list[str | int]:
        window = self.stats_window_ms
        return [task.attempt, state.value, code, data, self.ttl_ms, task.task_id, window]

    def _ending_keys(self, task_id: str) -> list[str]:
        """KEYS of FINISH and ABORT: task hash, result stream, tasks stream, dead-letter stream
        and index, stats."""
        k = self._keys
        return [k.task(task_id), k.result(task_id), k.tasks, k.dead, k.dead_letters, k.stats]


def _appended(reply: Any) -> Appended:
    result = WriteResult(reply_text(reply[0]))
    return Appended(result, int(reply[1]) if result is WriteResult.OK else 0)


def _no_script(reply: object) -> bool:
    return isinstance(reply, NoScriptError)
