"""The task protocol shared by the API and the workers: submit, claim, start, append, finish,
cancel, renew, reclaim, and read results. The Redis layout is in keys.py, the atomic state changes
in scripts.py, and the whole design in docs/protocol.md.

Delivery is at-least-once through a Redis stream consumer group. A worker holds the tasks it
claimed through the group's pending list, and keeps its hold by resetting their idle time every
lease/3 (RENEW). An entry idle for longer than the lease belongs to a dead worker, and any worker
takes it over with XAUTOCLAIM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llm_batcher import scripts
from llm_batcher.keys import TERMINAL_ENTRY_ID, WORKER_GROUP, Keys, token_entry_id, token_index


@dataclass(frozen=True, slots=True)
class Claim:
    """A task entry a worker took from the stream."""

    entry_id: str
    task_id: str


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


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """One entry of a task's result stream: a token, or the terminal `done` / `error`."""

    entry_id: str
    kind: str  # token | done | error
    text: str = ""
    data: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.entry_id == TERMINAL_ENTRY_ID

    @property
    def index(self) -> int:
        """0-based token position (tokens only)."""
        return token_index(self.entry_id)

    @classmethod
    def from_message(cls, payload: str) -> ResultEntry:
        """Parse the pub/sub announcement of an entry."""
        obj = json.loads(payload)
        return cls(obj["id"], obj["kind"], obj.get("text", ""), obj.get("data"))


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks waiting for a worker, and tasks a worker holds."""

    waiting: int
    in_flight: int


def error_data(code: str, message: str) -> str:
    """The JSON of a terminal `error` entry."""
    return json.dumps({"code": code, "message": message}, ensure_ascii=False)


class TaskQueue:
    """Redis operations on tasks; one instance per process, shared by all its coroutines."""

    def __init__(
        self, redis: Redis, keys: Keys, *, result_ttl_s: float, stats_window_s: float = 300
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(result_ttl_s * 1000)
        self.stats_window_ms = int(stats_window_s * 1000)
        self._submit = redis.register_script(scripts.SUBMIT)
        self._start = redis.register_script(scripts.START)
        self._append = redis.register_script(scripts.APPEND)
        self._finish = redis.register_script(scripts.FINISH)
        self._abort = redis.register_script(scripts.ABORT)
        self._renew = redis.register_script(scripts.RENEW)
        self._depth = redis.register_script(scripts.DEPTH)
        self._end_turn = redis.register_script(scripts.END_TURN)

    # --- both sides -----------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (after a Redis restart too)."""
        try:
            await self.redis.xgroup_create(self.keys.tasks, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def depth(self, lease_ms: int) -> QueueDepth:
        """Waiting: tasks no live worker holds (never delivered, or held by a worker whose lease
        lapsed). In flight: tasks live workers hold. Correct with no worker at all."""
        length, pending, stale = await self._depth(keys=[self.keys.tasks], args=[lease_ms, 10000])
        in_flight = int(pending) - int(stale)
        return QueueDepth(waiting=max(0, int(length) - in_flight), in_flight=in_flight)

    async def live_workers(self, now_ms: int, lease_ms: int) -> int:
        """Workers whose heartbeat is younger than one lease."""
        return int(await self.redis.zcount(self.keys.workers, now_ms - lease_ms, "+inf"))

    # --- API side ---------------------------------------------------------------------------

    async def submit(
        self, task_id: str, context: str, *, now_ms: int, deadline_ms: int, max_queue: int
    ) -> bool:
        """Queue a task; False (and nothing queued) when max_queue tasks are queued or running."""
        args: list[str | int] = [task_id, context, now_ms, deadline_ms, max_queue, self.ttl_ms]
        keys = [self.keys.tasks, self.keys.task(task_id)]
        return bool(await self._submit(keys=keys, args=args))

    async def cancel(self, task_id: str) -> bool:
        """End a task that no worker has started with error `cancelled`; False if it had started."""
        return await self._abort_if(task_id, "queued", "cancelled", "the client went away")

    async def expire(self, task_id: str, message: str) -> bool:
        """End a task that has not finished with error `timeout`; False if it had finished."""
        return await self._abort_if(task_id, "queued,running", "timeout", message)

    async def _abort_if(self, task_id: str, states: str, code: str, message: str) -> bool:
        keys = [
            self.keys.task(task_id),
            self.keys.result(task_id),
            self.keys.tasks,
            self.keys.stats,
        ]
        args: list[str | int] = [
            states,
            code,
            error_data(code, message),
            self.ttl_ms,
            self.stats_window_ms,
        ]
        return bool(await self._abort(keys=keys, args=args))

    async def results_after(self, task_id: str, index: int) -> list[ResultEntry]:
        """Result entries after token ``index`` (-1: from the start), terminal entry included."""
        raw: Any = await self.redis.xrange(
            self.keys.result(task_id), min=f"({token_entry_id(index)}", max="+"
        )
        return [_entry(eid, fields) for eid, fields in raw]

    async def deadline_of(self, task_id: str) -> int | None:
        """The task's deadline in ms since the epoch; None if Redis does not know the task."""
        value = await self.redis.hget(self.keys.task(task_id), "deadline_ms")
        return int(value) if value is not None else None

    async def task_exists(self, task_id: str) -> bool:
        """Whether Redis still knows the task (it expires after the result TTL)."""
        return bool(await self.redis.exists(self.keys.task(task_id)))

    # --- worker side ------------------------------------------------------------------------

    async def read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Claim]:
        """Claim up to ``count`` never-delivered tasks, waiting up to block_ms (None: no wait)."""
        try:
            reply: Any = await self.redis.xreadgroup(
                WORKER_GROUP, consumer, {self.keys.tasks: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [
            Claim(_text(eid), _text(f[b"task_id"])) for _, entries in reply for eid, f in entries
        ]

    async def reclaim_expired(self, consumer: str, count: int, lease_ms: int) -> list[Claim]:
        """Take over up to ``count`` tasks whose holder has not renewed them for a lease."""
        try:
            reply: Any = await self.redis.xautoclaim(
                self.keys.tasks, WORKER_GROUP, consumer, lease_ms, "0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:  # entries already deleted (finished elsewhere): drop them from the pending list
            await self.redis.xack(self.keys.tasks, WORKER_GROUP, *deleted)
        return [Claim(_text(eid), _text(f[b"task_id"])) for eid, f in claimed if f]

    async def start(
        self, claim: Claim, *, worker: str, now_ms: int, max_attempts: int
    ) -> StartedTask | str:
        """Begin an attempt: a StartedTask, or why not (missing, final, timeout, dead)."""
        keys = [
            self.keys.task(claim.task_id),
            self.keys.result(claim.task_id),
            self.keys.tasks,
            self.keys.dead,
            self.keys.stats,
        ]
        timeout = error_data("timeout", "the task's deadline passed before a worker started it")
        dead = error_data("dead_letter", f"the task was delivered {max_attempts} times")
        args: list[str | int] = [
            now_ms,
            max_attempts,
            worker,
            self.ttl_ms,
            timeout,
            dead,
            claim.task_id,
            self.stats_window_ms,
        ]
        reply = await self._start(keys=keys, args=args)
        if _text(reply[0]) != "run":
            if _text(reply[0]) == "missing":  # expired or lost with a Redis restart
                await self.redis.xack(self.keys.tasks, WORKER_GROUP, claim.entry_id)
                await self.redis.xdel(self.keys.tasks, claim.entry_id)
            return _text(reply[0])
        _, attempt, context, tokens, created, started, first = reply
        return StartedTask(
            task_id=claim.task_id,
            entry_id=claim.entry_id,
            attempt=int(attempt),
            context=_text(context),
            tokens_written=int(tokens),
            created_ms=int(created),
            started_ms=int(started),
            first_token_ms=int(first) if first else None,
        )

    async def append(
        self, task: StartedTask, first_index: int, tokens: list[str], now_ms: int
    ) -> int:
        """Write tokens from position first_index on; <0 if the task is no longer this attempt's."""
        keys = [self.keys.task(task.task_id), self.keys.result(task.task_id)]
        args: list[str | int] = [task.attempt, now_ms, first_index, self.ttl_ms, *tokens]
        return int(await self._append(keys=keys, args=args))

    async def finish(self, task: StartedTask, state: str, code: str, data: str) -> int:
        """End this attempt's task with `done` or `error`; <0 if it was not ours to end."""
        keys = [
            self.keys.task(task.task_id),
            self.keys.result(task.task_id),
            self.keys.tasks,
            self.keys.stats,
        ]
        args: list[str | int] = [task.attempt, state, code, data, self.ttl_ms, self.stats_window_ms]
        return int(await self._finish(keys=keys, args=args))

    async def renew(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Keep holding these entries; returns those this consumer no longer holds."""
        if not entry_ids:
            return []
        lost = await self._renew(keys=[self.keys.tasks], args=[WORKER_GROUP, consumer, *entry_ids])
        return [_text(e) for e in lost]

    async def release(self, consumer: str, entry_ids: list[str], lease_ms: int) -> None:
        """Hand entries back at once: mark them idle for longer than a lease."""
        if entry_ids:
            ids: list[int | bytes | str | memoryview] = list(entry_ids)
            await self.redis.xclaim(
                self.keys.tasks,
                WORKER_GROUP,
                consumer,
                0,
                ids,
                idle=lease_ms * 10,
                justid=True,
            )

    async def take_read_turn(self, worker: str, turn_ms: int) -> bool:
        """Become the one worker that reads new tasks, for at most turn_ms (keys.reader)."""
        return bool(await self.redis.set(self.keys.reader, worker, nx=True, px=turn_ms))

    async def end_read_turn(self, worker: str) -> None:
        """Let the next idle worker read."""
        await self._end_turn(keys=[self.keys.reader], args=[worker])

    async def heartbeat(self, worker: str, now_ms: int, lease_ms: int) -> None:
        """Record that this worker is alive, and forget workers silent for ten leases."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers, {worker: now_ms})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now_ms - 10 * lease_ms)
            await pipe.execute()

    async def leave(self, worker: str) -> None:
        """Remove this worker from the live set on a clean exit."""
        await self.redis.zrem(self.keys.workers, worker)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> ResultEntry:
    eid = _text(entry_id)
    kind = _text(fields[b"kind"])
    if kind == "token":
        return ResultEntry(eid, kind, text=fields[b"text"].decode())
    return ResultEntry(eid, kind, data=json.loads(fields[b"data"]))
