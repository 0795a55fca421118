"""Taking over a dead worker's tasks once its heartbeat lapses (claims.take_over_dead), against a
real Redis: within the bound, never from a live worker, and fenced like any takeover."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.claims import Claim, TakenOver
from llm_batcher.protocol.keys import WORKER_GROUP
from llm_batcher.protocol.outcomes import ErrorCode, StartOutcome, WriteResult
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import Refused, StartedTask
from tests.support.results import answer, make_queue, submit, wait_result
from tests.support.waiting import eventually

SILENCE_MS = 400
"""The heartbeat timeout of these tests: short, so that they run fast."""
BEAT_S = SILENCE_MS / 4000
LEASE_MS = 60_000  # long: no entry here moves by its lease


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix)
    await q.claims.ensure_group()
    return q


async def beat(queue: TaskQueue, worker: str) -> None:
    await queue.claims.heartbeat(worker, now_ms(), LEASE_MS, break_ms=SILENCE_MS // 2)


@contextlib.asynccontextmanager
async def beating(queue: TaskQueue, worker: str) -> AsyncIterator[None]:
    """``worker`` beats every timeout/4 (as worker/heartbeat.py does) while the block runs.

    The loop ends on an event, not by cancellation: a cancellation that lands inside a Redis
    call can be swallowed by the client, and the loop would then beat on, and the test hang."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await beat(queue, worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT_S)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def beaten_for(queue: TaskQueue, worker: str, ms: int) -> bool:
    """Whether ``worker`` has beaten without a break for ``ms`` (by Redis's clock)."""
    value = await queue.redis.hget(queue.keys.beats, worker)
    if value is None:
        return False
    seconds, micros = await queue.redis.time()
    _, since = (int(v) for v in value.decode().split(","))
    return seconds * 1000 + micros // 1000 - since >= ms


async def claim(queue: TaskQueue, worker: str, n: int) -> list[Claim]:
    ids = [await submit(queue, f"task {i} of {worker}") for i in range(n)]
    claims = await queue.claims.read_new(worker, n, None)
    assert [c.task_id for c in claims] == ids
    return claims


async def take_over(queue: TaskQueue, taker: str = "rescuer") -> TakenOver:
    return await queue.claims.take_over_dead(taker, 10, silence_ms=SILENCE_MS)


async def consumers(queue: TaskQueue) -> set[str]:
    rows = await queue.redis.xinfo_consumers(queue.keys.tasks, WORKER_GROUP)
    return {row["name"].decode() for row in rows}


async def test_a_dead_workers_tasks_are_taken_over_once_its_heartbeat_lapses(
    queue: TaskQueue,
) -> None:
    async with beating(queue, "rescuer"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")
        died_at = time.monotonic()  # the victim's last heartbeat: it beats no more
        await beat(queue, "victim")
        held = await claim(queue, "victim", 3)
        assert await take_over(queue) == TakenOver([], [])  # not yet: it may be alive
        taken: list[TakenOver] = []

        async def taken_over() -> bool:
            taken.append(await take_over(queue))
            return bool(taken[-1].claims)

        await eventually(taken_over, 5, "the victim's tasks to be taken over")
        after_s = time.monotonic() - died_at
    assert taken[-1] == TakenOver(held, ["victim"])
    # Never before the silence (the point); the upper bound only says the takeover came at all
    # soon after it, and is generous: a loaded 2-core machine delays the polling test client.
    assert SILENCE_MS / 1000 <= after_s < SILENCE_MS / 1000 + 3.0, after_s
    rows = await queue.redis.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 10)
    assert {r["consumer"] for r in rows} == {b"rescuer"}
    # the dead worker is forgotten: its consumer, its heartbeat, its place in the live set
    assert "victim" not in await consumers(queue)
    assert await queue.redis.hget(queue.keys.beats, "victim") is None
    assert await queue.redis.zscore(queue.keys.workers, "victim") is None


async def test_a_live_but_slow_worker_keeps_its_tasks(queue: TaskQueue) -> None:
    """A worker that beats but renews nothing for many heartbeat timeouts (its event loop busy
    with a batch) keeps its tasks: only its heartbeat counts."""
    async with beating(queue, "rescuer"), beating(queue, "slow"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")
        held = await claim(queue, "slow", 2)
        await eventually(
            lambda: beaten_for(queue, "slow", 4 * SILENCE_MS), 10, "four timeouts of beats"
        )
        assert await take_over(queue) == TakenOver([], [])
    rows = await queue.redis.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 10)
    assert [r["message_id"].decode() for r in rows] == [c.entry_id for c in held]
    assert {r["consumer"] for r in rows} == {b"slow"}


async def test_a_taker_judges_only_after_beating_for_a_whole_timeout(queue: TaskQueue) -> None:
    """After a pause of Redis every heartbeat looks old: a worker whose own beats broke off
    judges nobody dead until it has beaten again for a whole timeout, and by then the live
    workers have beaten too."""
    await beat(queue, "victim")
    await claim(queue, "victim", 1)
    await beat(queue, "rescuer")
    assert await take_over(queue) == TakenOver([], [])  # the taker has only just started
    await eventually(
        lambda: beaten_for(queue, "victim", SILENCE_MS), 5, "the victim to be silent a timeout"
    )
    # the taker's beats broke off too (a gap above break_ms): it starts a new run
    await beat(queue, "rescuer")
    last, since = (await queue.redis.hget(queue.keys.beats, "rescuer")).decode().split(",")
    assert since == last  # a new run of heartbeats began with this one
    assert await take_over(queue) == TakenOver([], [])
    async with beating(queue, "rescuer"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")
        assert len((await take_over(queue)).claims) == 1


async def test_a_takeover_fences_the_old_worker_out(queue: TaskQueue) -> None:
    await beat(queue, "victim")
    (held,) = await claim(queue, "victim", 1)
    old = await start(queue, held, "victim")
    assert (await queue.tasks.append(old, 0, ["a", "b"], now_ms())).result is WriteResult.OK
    async with beating(queue, "rescuer"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")
        taken: list[Claim] = []

        async def taken_over() -> bool:
            taken.extend((await take_over(queue)).claims)
            return bool(taken)

        await eventually(taken_over, 5, "the takeover")
    new = await start(queue, taken[0], "rescuer")
    assert (new.attempt, new.tokens_written) == (2, 2)
    # the old worker, back from its pause, can write nothing and learns it holds nothing
    assert (await queue.tasks.append(old, 2, ["stale"], now_ms())).result is WriteResult.FENCED
    assert await queue.tasks.complete(old, {}) is WriteResult.FENCED
    assert await queue.tasks.fail(old, ErrorCode.TIMEOUT, "stale") is WriteResult.FENCED
    assert await queue.claims.renew("victim", [held.entry_id]) == [held.entry_id]
    appended, done = await queue.tasks.append_and_complete(new, 0, ["a", "b", "c"], now_ms(), {})
    assert (appended.result, done) == (WriteResult.OK, WriteResult.OK)
    assert answer(await wait_result(queue, held.task_id, 5)) == "abc"


async def test_a_worker_taken_for_dead_cannot_start_what_it_had_claimed(queue: TaskQueue) -> None:
    """A worker paused between its claim and its START (reading ahead, say) finds the task taken
    over: its START is refused, so the task never runs twice, not even until a fenced write."""
    await beat(queue, "paused")
    (held,) = await claim(queue, "paused", 1)
    taken = await queue.claims.take_over_dead(
        "rescuer", 10, silence_ms=SILENCE_MS, workers=["paused"]
    )
    assert taken.claims == [held]
    late = await queue.tasks.start(held, worker="paused", now_ms=now_ms(), max_attempts=3)
    assert late == Refused(StartOutcome.NOT_HELD)
    assert await queue.redis.hget(queue.keys.task(held.task_id), "state") == b"queued"
    assert (await start(queue, held, "rescuer")).attempt == 1  # the refusal cost no attempt


async def test_a_named_dead_worker_is_handed_on_to_any_worker(queue: TaskQueue) -> None:
    """What a caller that saw the worker's process end does (the Kubernetes operator): it names
    the worker, whatever its heartbeat says, and hands its tasks on."""
    await beat(queue, "gone")
    held = await claim(queue, "gone", 2)
    taken = await queue.claims.take_over_dead(
        "operator", 100, silence_ms=SILENCE_MS, workers=["gone"], idle_ms=10 * LEASE_MS
    )
    assert taken == TakenOver(held, ["gone"])
    assert "gone" not in await consumers(queue)
    assert await queue.redis.hget(queue.keys.beats, "gone") is None
    # any worker's next reclaim takes them, without waiting for a lease
    assert await queue.claims.reclaim_expired("w2", 10, LEASE_MS) == held


async def test_a_dead_worker_holding_nothing_is_forgotten(queue: TaskQueue) -> None:
    await beat(queue, "idle-victim")
    await queue.claims.read_new("idle-victim", 1, None)  # creates its consumer, reads nothing
    async with beating(queue, "rescuer"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")

        async def forgotten() -> bool:
            return (await take_over(queue)).workers == ["idle-victim"]

        await eventually(forgotten, 5, "the silent worker to be forgotten")
    assert "idle-victim" not in await consumers(queue)


async def start(queue: TaskQueue, claim: Claim, worker: str) -> StartedTask:
    started = await queue.tasks.start(claim, worker=worker, now_ms=now_ms(), max_attempts=3)
    assert isinstance(started, StartedTask), started
    return started


async def test_the_read_turn_of_a_dead_worker_passes_once_its_heartbeat_lapses(
    queue: TaskQueue,
) -> None:
    """A worker that dies holding the read turn holds up reading for a heartbeat timeout, not
    for the rest of its turn (a minute here)."""
    async with beating(queue, "rescuer"):
        await eventually(lambda: beaten_for(queue, "rescuer", SILENCE_MS), 5, "a steady taker")
        died_at = time.monotonic()  # the victim's last heartbeat: it beats no more
        await beat(queue, "victim")
        assert await queue.claims.take_read_turn("victim", 60_000, silence_ms=SILENCE_MS)
        # not yet: the holder may be alive
        assert not await queue.claims.take_read_turn("rescuer", 60_000, silence_ms=SILENCE_MS)
        await eventually(
            lambda: queue.claims.take_read_turn("rescuer", 60_000, silence_ms=SILENCE_MS),
            5,
            "the dead holder's turn to pass",
        )
        after_s = time.monotonic() - died_at
    assert after_s >= SILENCE_MS / 1000  # never before the silence
    assert await queue.redis.get(queue.keys.reader) == b"rescuer"
    assert 50_000 < await queue.redis.pttl(queue.keys.reader) <= 60_000  # a turn of its own


async def test_a_live_holder_keeps_the_read_turn(queue: TaskQueue) -> None:
    """A holder that beats keeps its turn, however long it reads; and a taker that has just
    started beating judges nobody (as for takeovers)."""
    async with beating(queue, "reader"):
        assert await queue.claims.take_read_turn("reader", 60_000, silence_ms=SILENCE_MS)
        await beat(queue, "idle")
        assert not await queue.claims.take_read_turn("idle", 60_000, silence_ms=SILENCE_MS)
        async with beating(queue, "idle"):
            await eventually(
                lambda: beaten_for(queue, "idle", 3 * SILENCE_MS), 10, "three timeouts of beats"
            )
            assert not await queue.claims.take_read_turn("idle", 60_000, silence_ms=SILENCE_MS)
        assert await queue.redis.get(queue.keys.reader) == b"reader"
        # the holder itself does not take its own turn again: it ends it first
        assert not await queue.claims.take_read_turn("reader", 60_000, silence_ms=SILENCE_MS)
        await queue.claims.end_read_turn("reader")
        assert await queue.claims.take_read_turn("idle", 60_000, silence_ms=SILENCE_MS)
