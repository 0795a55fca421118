"""Claims and leases: how workers take tasks from the stream and keep or hand back their hold.

Delivery is at-least-once through a Redis stream consumer group. A worker holds the tasks it
claimed through the group's pending list, and keeps its hold by resetting their idle time every
lease/3 (RENEW). An entry idle for longer than the lease belongs to a dead worker, and any worker
takes it over with XAUTOCLAIM. Idle workers take turns at reading new tasks (keys.Keys.reader).

A worker that dies is found sooner by its heartbeat (HEARTBEAT, keys.Keys.beats): a worker whose
heartbeat is older than the heartbeat timeout is dead, and an idle worker takes its tasks over at
once (take_over_dead), without waiting for their lease. A worker wrongly taken for dead (paused,
starved of CPU) loses nothing but time: the taker's START gives the task a new attempt number,
which fences the old worker's writes out, and its next renewal tells it the tasks are gone.

A read that waits for new tasks ends at its deadline to the millisecond. Redis checks the
timeouts of blocked commands only `hz` times a second (every 100 ms by default), so with a BLOCK
timeout alone a 50 ms batch window lasted 100 ms. The read blocks on a connection of its own, and
at the deadline another connection ends it with CLIENT UNBLOCK ... TIMEOUT, which makes it return
as a timeout does: with no entries, so nothing is delivered that nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import WORKER_GROUP, Keys
from llm_batcher.protocol.scripts import Script


@dataclass(frozen=True, slots=True)
class Claim:
    """A task entry a worker took from the stream."""

    entry_id: str
    task_id: str


@dataclass(frozen=True, slots=True)
class TakenOver:
    """What take_over_dead did: the entries taken, and the dead workers it dealt with."""

    claims: list[Claim]
    workers: list[str]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks waiting for a worker, and tasks a worker holds."""

    waiting: int
    in_flight: int


class Claims:
    """The worker side of the task stream, and the live-worker set."""

    def __init__(self, redis: Redis, keys: Keys, scripts: dict[Script, AsyncScript]) -> None:
        self._redis = redis
        self._keys = keys
        self._renew = scripts[Script.RENEW]
        self._depth = scripts[Script.DEPTH]
        self._take_turn = scripts[Script.TAKE_TURN]
        self._end_turn = scripts[Script.END_TURN]
        self._ahead_turn = scripts[Script.AHEAD_TURN]
        self._heartbeat = scripts[Script.HEARTBEAT]
        self._take_over = scripts[Script.TAKE_OVER]
        self._reader: Redis | None = None  # one connection of the pool, for blocking reads
        self._reader_id: int | None = None  # its CLIENT ID; None until asked, and on reconnect

    async def close(self) -> None:
        """Give back the connection that blocking reads use."""
        if self._reader is not None:
            await self._reader.aclose()
            self._reader = self._reader_id = None

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (after a Redis restart too)."""
        try:
            await self._redis.xgroup_create(self._keys.tasks, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def depth(self, lease_ms: int) -> QueueDepth:
        """Waiting: tasks no live worker holds (never delivered, or held by a worker whose lease
        lapsed). In flight: tasks live workers hold. Correct with no worker at all."""
        length, pending, stale = await self._depth(keys=[self._keys.tasks], args=[lease_ms, 10000])
        in_flight = int(pending) - int(stale)
        return QueueDepth(waiting=max(0, int(length) - in_flight), in_flight=in_flight)

    async def live_workers(self, now_ms: int, lease_ms: int) -> int:
        """Workers whose heartbeat is younger than one lease."""
        return int(await self._redis.zcount(self._keys.workers, now_ms - lease_ms, "+inf"))

    async def read_new(self, consumer: str, count: int, block_ms: int | None) -> list[Claim]:
        """Claim up to ``count`` never-delivered tasks, waiting up to block_ms (None: no wait)."""
        try:
            if block_ms is None:
                reply: Any = await self._redis.xreadgroup(
                    WORKER_GROUP, consumer, {self._keys.tasks: ">"}, count=count
                )
            else:
                reply = await self._read_blocking(consumer, count, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [
            Claim(reply_text(eid), reply_text(f[b"task_id"]))
            for _, entries in reply or []
            for eid, f in entries
        ]

    async def _read_blocking(self, consumer: str, count: int, block_ms: int) -> Any:
        """XREADGROUP BLOCK on the reader connection, unblocked at ``block_ms`` (module doc)."""
        if self._reader is None:
            self._reader = Redis(
                connection_pool=self._redis.connection_pool, single_connection_client=True
            )
        reader = self._reader
        client_id = self._reader_id
        if client_id is None:
            client_id = self._reader_id = await reader.client_id()
            if reader.connection is not None:
                reader.connection.register_connect_callback(self._reader_reconnected)  # type: ignore[no-untyped-call]
        read = asyncio.ensure_future(
            reader.xreadgroup(
                WORKER_GROUP, consumer, {self._keys.tasks: ">"}, count=count, block=max(1, block_ms)
            )
        )
        try:
            done, _ = await asyncio.wait({read}, timeout=block_ms / 1000)
            if not done:
                # Not allowed (an ACL without CLIENT) or failed: Redis ends it a little later.
                with contextlib.suppress(RedisError):
                    await self._redis.client_unblock(client_id, error=False)
            return await read
        finally:
            read.cancel()  # a no-op once done; else (cancelled ourselves) the read goes too

    def _reader_reconnected(self, _connection: object) -> None:
        self._reader_id = None  # a new connection has a new id

    async def recent_arrivals(self) -> list[int]:
        """The newest tasks' arrival times (keys.arrivals), in ms of Redis's clock."""
        return [int(t) for t in await self._redis.lrange(self._keys.arrivals, 0, -1)]

    async def reclaim_expired(self, consumer: str, count: int, lease_ms: int) -> list[Claim]:
        """Take over up to ``count`` tasks whose holder has not renewed them for a lease."""
        try:
            reply: Any = await self._redis.xautoclaim(
                self._keys.tasks, WORKER_GROUP, consumer, lease_ms, "0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:  # entries already deleted (finished elsewhere): drop them from the pending list
            await self._redis.xack(self._keys.tasks, WORKER_GROUP, *deleted)
        return [Claim(reply_text(eid), reply_text(f[b"task_id"])) for eid, f in claimed if f]

    async def take_over_dead(
        self,
        taker: str,
        count: int,
        *,
        silence_ms: int,
        workers: Sequence[str] = (),
        idle_ms: int = 0,
    ) -> TakenOver:
        """Take over up to ``count`` tasks of dead workers for the consumer ``taker``, and forget
        each dead worker (its consumer, its heartbeat) once it holds nothing.

        The dead are ``workers`` when named (say, by whoever saw their process end), else the
        workers whose heartbeat is older than ``silence_ms`` by Redis's clock; those are judged
        only by a taker that has itself beaten without a break for ``silence_ms``, so that a pause
        of Redis does not pass for the death of every worker. ``idle_ms`` 0: the taker runs the
        tasks (START fences the dead worker out); above the lease: the taker hands them on, and
        any worker's next reclaim_expired takes them."""
        args: list[str | int] = [taker, count, silence_ms, idle_ms, *workers]
        keys = [self._keys.tasks, self._keys.beats, self._keys.workers, self._keys.idle]
        try:
            taken, dead = await self._take_over(keys=keys, args=args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return TakenOver([], [])
        claims = [
            Claim(reply_text(taken[i]), reply_text(taken[i + 1])) for i in range(0, len(taken), 2)
        ]
        return TakenOver(claims, [reply_text(w) for w in dead])

    async def drop(self, claim: Claim) -> None:
        """Remove the entry of a task Redis no longer knows, so nobody claims it again."""
        await self._redis.xack(self._keys.tasks, WORKER_GROUP, claim.entry_id)
        await self._redis.xdel(self._keys.tasks, claim.entry_id)

    async def renew(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Keep holding these entries; returns those this consumer no longer holds."""
        if not entry_ids:
            return []
        lost = await self._renew(keys=[self._keys.tasks], args=[consumer, *entry_ids])
        return [reply_text(e) for e in lost]

    async def release(self, consumer: str, entry_ids: list[str], lease_ms: int) -> None:
        """Hand entries back at once: mark them idle for longer than a lease."""
        if entry_ids:
            ids: list[int | bytes | str | memoryview] = list(entry_ids)
            await self._redis.xclaim(
                self._keys.tasks,
                WORKER_GROUP,
                consumer,
                0,
                ids,
                idle=lease_ms * 10,
                justid=True,
            )

    async def take_read_turn(self, worker: str, turn_ms: int, *, silence_ms: int) -> bool:
        """Become the one worker that reads new tasks, for at most turn_ms (keys.reader): when
        the turn is free, or its holder's heartbeat is older than ``silence_ms`` (judged as
        take_over_dead judges, by a worker that has itself beaten without a break that long)."""
        args: list[str | int] = [worker, turn_ms, silence_ms]
        return bool(await self._take_turn(keys=[self._keys.reader, self._keys.beats], args=args))

    async def end_read_turn(self, worker: str) -> None:
        """Let the next idle worker read."""
        await self._end_turn(keys=[self._keys.reader], args=[worker])

    async def take_turn_ahead(self, worker: str, turn_ms: int, idle_since_ms: int) -> bool:
        """Take the read turn to read ahead, unless another worker was seen idle since
        ``idle_since_ms`` (keys.idle)."""
        args: list[str | int] = [worker, turn_ms, idle_since_ms]
        keys = [self._keys.reader, self._keys.idle]
        return bool(await self._ahead_turn(keys=keys, args=args))

    async def note_idle(self, worker: str, now_ms: int) -> None:
        """Record that this worker is waiting for tasks."""
        await self._redis.zadd(self._keys.idle, {worker: now_ms})

    async def note_busy(self, worker: str) -> None:
        """Record that this worker is running a batch."""
        await self._redis.zrem(self._keys.idle, worker)

    async def heartbeat(self, worker: str, now_ms: int, lease_ms: int, break_ms: int) -> None:
        """Record that this worker is alive, and forget workers silent for ten leases. A gap of
        more than ``break_ms`` since its last heartbeat starts a new run of them (keys.beats)."""
        keys = [self._keys.workers, self._keys.idle, self._keys.beats]
        await self._heartbeat(keys=keys, args=[worker, now_ms, lease_ms, break_ms])

    async def leave(self, worker: str) -> None:
        """Remove this worker from the live and idle sets and the heartbeats on a clean exit."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.workers, worker)
            pipe.zrem(self._keys.idle, worker)
            pipe.hdel(self._keys.beats, worker)
            await pipe.execute()
