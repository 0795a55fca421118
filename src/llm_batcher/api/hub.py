"""One pub/sub reader per API process that fans result entries out to the waiting streams.

Each task's result stream is announced on a channel of the same name (scripts.py). The hub holds
one pub/sub connection for the whole process, whatever the number of open streams; a stream
subscribes to its task's channel, then reads what was written before from the result stream
(backfill), so nothing falls between the two; a new task's stream subscribes before the task is
queued, and needs no backfill when Redis took the subscription first (open_ahead). Pub/sub loses
what is published while the connection is down: after every reconnect the hub tells each stream
to backfill again (RESYNC).

A task can also vanish without an announcement: its hash expired, or Redis restarted without its
data. Rather than every stream checking its own task when it has been silent for a while (with
10,000 streams waiting, thousands of Redis calls a second that starved the connection pool), the
hub checks every open stream's task in a few pipelines every LIVENESS_SWEEP_S, and tells the
streams of vanished tasks (GONE), which read Redis and end with `lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from llm_batcher.api.liveness import RedisLiveness
from llm_batcher.background import keep_running, spawn
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.results import ResultEntry

log = logging.getLogger(__name__)

RESYNC = "resync"
"""Queued to every subscription after a reconnect: messages may have been lost; read Redis."""
CLOSE = "close"
"""Queued to every subscription when the server shuts down: end the stream, no terminal event."""
GONE = "gone"
"""Queued to the subscriptions of a task that no longer exists in Redis: read Redis."""

_SUBSCRIBE = "subscribe"
_UNSUBSCRIBE = "unsubscribe"

LIVENESS_SWEEP_S = 5.0
"""How often the hub checks that the tasks of open streams still exist."""
SWEEP_CHUNK = 1000
"""Tasks checked in one pipeline (one round trip) of the sweep."""

Item = ResultEntry | str

_SEND_FAILURES: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, AttributeError)
"""What a send meets on a connection being reconnected (see _ReconnectAwarePubSub.send)."""


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's error as seen: an unsubscription's failure has no one to tell."""
    if not future.cancelled():
        future.exception()


class Subscription:
    """The entries announced for one task, as one stream sees them."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.items: asyncio.Queue[Item] = asyncio.Queue()

    async def get(self, timeout_s: float) -> Item | None:
        """The next announced entry or marker; None after timeout_s of silence."""
        if not self.items.empty():  # no timer for what is already here
            return self.items.get_nowait()
        try:
            async with asyncio.timeout(timeout_s):
                return await self.items.get()
        except TimeoutError:
            return None

    async def get_ready(self, timeout_s: float) -> list[Item | None]:
        """The next item and every one queued behind it; [None] after timeout_s of silence."""
        items = [await self.get(timeout_s)]
        while items[-1] is not None and not self.items.empty():
            items.append(self.items.get_nowait())
        return items


class _ReconnectAwarePubSub(PubSub):
    """redis-py reconnects and resubscribes by itself; the hub must know when it did.

    Only the reader reconnects while it reads. A (un)subscription sent on a connection found
    dropped used to reconnect it too (redis-py's retry does), at the same time as the reader:
    their handshakes read the same socket at once, and the stream that subscribed failed with a
    RuntimeError (a connection killed while streams opened, tests/api/test_pubsub_drop.py).
    """

    hub: ResultHub | None = None

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)
        if self.hub is not None:
            self.hub.connected()

    async def send(self, command: str, channels: list[str]) -> None:
        """(Un)subscribe ``channels``. While the reader reads, the hub's wish is recorded first
        (redis-py records it once sent): the reader's next reconnection subscribes to what is
        recorded, so a subscription that a dropped connection did not take is sent then (one
        sent twice is harmless), and an unsubscription is not undone. While the reader is idle
        (nothing subscribed), the connection is (re)connected here, once more if the first
        send finds it dropped."""
        wanted: dict[Any, Any] = dict.fromkeys(channels)
        names = self._normalize_keys(wanted)
        if not self.subscribed:
            await self._send_alone(command, channels)
            if command == _SUBSCRIBE:
                self.channels.update(names)
            return
        if command == _SUBSCRIBE:
            self.channels.update(names)
        else:
            for name in names:
                self.channels.pop(name, None)
        try:
            if self.connection is None or not self.connection.is_connected:
                raise RedisConnectionError("the pub/sub connection is down")
            await self.connection.send_command(command, *channels, check_health=False)
        except _SEND_FAILURES as exc:
            # The reader reconnects, and sends what is recorded. A send on a connection being
            # reconnected meets a ConnectionError, or an AttributeError from redis-py: the
            # writer the reader has just dropped.
            log.info("pub/sub %s deferred to the reconnection: %r", command, exc)

    async def _send_alone(self, command: str, channels: list[str]) -> None:
        """Send with nothing reading the connection: (re)connecting it here is safe."""
        for attempt in range(2):
            await self.connect()  # type: ignore[no-untyped-call]
            assert self.connection is not None
            try:
                await self.connection.send_command(command, *channels)
                return
            except REDIS_UNAVAILABLE:
                if attempt:
                    raise


class ResultHub:
    """Multiplexes every open stream of this process over one pub/sub connection."""

    def __init__(self, redis: Redis, keys: Keys, liveness: RedisLiveness | None = None) -> None:
        self.keys = keys
        self.liveness = liveness or RedisLiveness()
        self._redis = redis
        self._sweeper: asyncio.Task[None] | None = None
        self._pubsub = _ReconnectAwarePubSub(redis.connection_pool, ignore_subscribe_messages=False)
        self._pubsub.hub = self
        self._subs: dict[str, set[Subscription]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_runs = 0
        self._wake = asyncio.Event()  # set when the reader may have something to read
        self._idle = asyncio.Event()  # set while no stream is open
        self._idle.set()
        self.closing = False
        # redis-py's PubSub is not safe for concurrent first use: every caller that finds it
        # unconnected takes a pool connection of its own and the last one wins, so the
        # subscriptions sent on the others are never read and the pool runs dry (32 streams
        # opened at once waited 5 s, then failed). One (un)subscribe at a time.
        self._command_lock = asyncio.Lock()
        self._commands: list[tuple[str, str]] = []  # (un)subscriptions not sent yet, in order
        self._commands_sent: asyncio.Future[None] | None = None  # when those will have been sent

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        # Connected now rather than by the first stream's subscribe: a client that hung up
        # while that connect was under way went unnoticed (its cancellation was lost in it).
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            async with self._command_lock:
                await self._pubsub.connect()  # type: ignore[no-untyped-call]
        self._reader = keep_running("result-hub", self._read_loop)
        self._sweeper = keep_running("liveness-sweep", self._sweep_loop)

    async def stop(self) -> None:
        for task in (self._reader, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no stream is open; False if some still are after timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def close_all(self) -> None:
        """Tell every open stream to end without a terminal event (server shutdown)."""
        self.closing = True
        self._broadcast(CLOSE)

    @contextlib.asynccontextmanager
    async def subscribe(self, task_id: str, timeout_s: float) -> AsyncIterator[Subscription]:
        """Subscribe to a task's entries for the duration of the block (see open)."""
        sub = await self.open(task_id, timeout_s)
        try:
            yield sub
        finally:
            self.close(sub)

    async def open(self, task_id: str, timeout_s: float) -> Subscription:
        """Subscribe to a task's entries; returns once Redis confirmed the subscription, so
        every entry added from then on reaches it. Close it with close()."""
        sub, first = self._add(task_id)
        try:
            if first:
                await self._send_subscribe(task_id)
            await self._wait_confirmed(self.keys.result(task_id), timeout_s)
        except BaseException:
            self.close(sub)
            raise
        return sub

    async def open_ahead(self, task_id: str, timeout_s: float) -> Subscription | None:
        """Subscribe to the entries of a task about to be queued: returns once the subscription
        is sent, without waiting for Redis to confirm it; None (nothing subscribed) if it could
        not be sent within timeout_s. Tasks.submit then says whether Redis took it before the
        task: if so the stream needs neither the confirmation nor a first read of the result
        stream (a round trip each); if not, confirmed() and a read, as after open(). Close it
        with close()."""
        sub, first = self._add(task_id)
        try:
            if first:
                async with asyncio.timeout(timeout_s):
                    await self._send_subscribe(task_id)
        except REDIS_UNAVAILABLE as exc:  # TimeoutError included
            log.info("subscribing ahead of task %s failed (%r): after it, then", task_id, exc)
            self.close(sub)
            return None
        except BaseException:
            self.close(sub)
            raise
        return sub

    def _add(self, task_id: str) -> tuple[Subscription, bool]:
        """A new subscription to a task's entries, and whether it is the task's first here (the
        one to send to Redis, whose confirmation every other one waits for)."""
        sub = Subscription(task_id)
        first = task_id not in self._subs
        self._subs.setdefault(task_id, set()).add(sub)
        self._idle.clear()
        if first:
            self._confirmed[self.keys.result(task_id)] = asyncio.Event()
        return sub, first

    async def _send_subscribe(self, task_id: str) -> None:
        # shielded: the send is shared with other streams, which this one's cancellation
        # must not fail
        await asyncio.shield(self._queue_command(_SUBSCRIBE, self.keys.result(task_id)))
        self._wake.set()

    async def confirmed(self, sub: Subscription, timeout_s: float) -> None:
        """Wait until Redis confirmed the subscription of ``sub`` (opened by open_ahead)."""
        await self._wait_confirmed(self.keys.result(sub.task_id), timeout_s)

    def close(self, sub: Subscription) -> None:
        """End a subscription (again: nothing); the last one of a task unsubscribes."""
        task_id = sub.task_id
        subs = self._subs.get(task_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[task_id]
            if not self._subs:
                self._idle.set()
            channel = self.keys.result(task_id)
            self._confirmed.pop(channel, None)
            self._queue_command(_UNSUBSCRIBE, channel)  # failures: nothing to do

    def _queue_command(self, command: str, channel: str) -> asyncio.Future[None]:
        """Queue a (un)subscription; the commands queued in one event-loop turn are sent
        together, in order (a run of the same command as one). The future ends when they are
        sent, with their error if sending failed."""
        self._commands.append((command, channel))
        if self._commands_sent is None:
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sent.add_done_callback(_retrieve)
            self._commands_sent = sent
            spawn(self._send_commands(sent), "pub/sub (un)subscriptions")
        return self._commands_sent

    async def _send_commands(self, sent: asyncio.Future[None]) -> None:
        await asyncio.sleep(0)  # the other streams of this loop turn queue theirs
        async with self._command_lock:
            commands, self._commands, self._commands_sent = self._commands, [], None
            try:
                for command, run in itertools.groupby(commands, key=lambda c: c[0]):
                    channels = [channel for _, channel in run]
                    await self._pubsub.send(command, channels)
            except BaseException as exc:  # every waiting stream gets it, cancellation included
                sent.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
        sent.set_result(None)

    async def _wait_confirmed(self, channel: str, timeout_s: float) -> None:
        event = self._confirmed.get(channel)
        if event is not None:
            async with asyncio.timeout(timeout_s):
                await event.wait()

    def connected(self) -> None:
        """Called on every reconnection of the pub/sub connection, once it has subscribed again.

        Every time, the first one included: what was published since a stream last read Redis
        (when the hub found the connection gone, say) reached no one. redis-py does not call
        this for the connection's first connect, which the hub used to take its first call for:
        the first reconnection of a process, after Redis was unreachable for a moment, told no
        stream, and one whose last entries fell in that gap waited for them until its deadline.
        """
        log.info("pub/sub reconnected; %d stream(s) re-read their results", self.open_streams)
        self._broadcast(RESYNC)

    def _broadcast(self, item: str) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.items.put_nowait(item)

    async def sweep(self) -> int:
        """Check that the task of every open stream still exists, SWEEP_CHUNK tasks a round
        trip; queue GONE to the streams of those that do not. Returns how many streams got it."""
        task_ids = list(self._subs)
        told = 0
        for start in range(0, len(task_ids), SWEEP_CHUNK):
            chunk = task_ids[start : start + SWEEP_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.exists(self.keys.task(task_id))
                found = await pipe.execute()
            self.liveness.answered()
            for task_id, exists in zip(chunk, found, strict=True):
                if not exists:
                    for sub in self._subs.get(task_id, ()):
                        sub.items.put_nowait(GONE)
                        told += 1
        return told

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_SWEEP_S)
            try:
                await self.sweep()
            except REDIS_UNAVAILABLE as exc:  # the streams notice an outage by themselves
                log.info("liveness sweep skipped: Redis unavailable (%s)", exc)

    async def _read_loop(self) -> None:
        if self._reader_runs:
            # Restarted after a crash (background.keep_running): the message being dispatched
            # may be lost, so every stream reads Redis again.
            self._broadcast(RESYNC)
        self._reader_runs += 1
        backoff = 0.1
        while True:
            self._wake.clear()  # before the check: a subscribe right after it sets the event
            if not self._pubsub.subscribed:
                await self._wake.wait()  # nothing to read until a stream subscribes
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except REDIS_UNAVAILABLE as exc:
                log.warning("pub/sub connection lost (%s); reconnecting in %.1f s", exc, backoff)
                self._broadcast(RESYNC)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if message is not None:
                self.liveness.answered()
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        kind = message["type"]
        if kind == "subscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
        elif kind == "message":
            subs = self._subs.get(self.keys.task_id_of_channel(channel))
            if subs:
                entries = ResultEntry.from_announcement(message["data"])
                for sub in subs:
                    for entry in entries:
                        sub.items.put_nowait(entry)
