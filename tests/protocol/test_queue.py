"""The task protocol (protocol/) against a real Redis, without a worker process."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from llm_batcher.clock import now_ms
from llm_batcher.protocol.claims import Claim, QueueDepth
from llm_batcher.protocol.keys import ARRIVALS_KEPT, WORKER_GROUP
from llm_batcher.protocol.outcomes import StartOutcome, WriteResult
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry
from llm_batcher.protocol.scripts import Script, source
from llm_batcher.protocol.tasks import Refused, StartedTask
from llm_batcher.worker.window import arrival_ms
from tests.support.results import answer, make_queue, submit, terminal
from tests.support.waiting import eventually

MAX_ATTEMPTS = 3


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix)
    await q.claims.ensure_group()
    return q


async def claim_one(queue: TaskQueue, consumer: str = "c1") -> Claim:
    claims = await queue.claims.read_new(consumer, 10, None)
    assert len(claims) == 1, claims
    return claims[0]


async def start(queue: TaskQueue, claim: Claim, worker: str = "c1") -> StartedTask:
    started = await queue.tasks.start(
        claim, worker=worker, now_ms=now_ms(), max_attempts=MAX_ATTEMPTS
    )
    assert isinstance(started, StartedTask), started
    return started


async def pending_ids(queue: TaskQueue) -> list[str]:
    rows = await queue.redis.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 100)
    return [r["message_id"].decode() for r in rows]


async def test_submit_claim_start_append_finish_round_trip(queue: TaskQueue) -> None:
    task_id = await submit(queue, "the context")
    claim = await claim_one(queue)
    assert claim.task_id == task_id
    task = await start(queue, claim)
    assert (task.attempt, task.context, task.tokens_written) == (1, "the context", 0)
    assert task.first_token_ms is None

    assert (await queue.tasks.append(task, 0, ["the ", "con"], now_ms())).tokens == 2
    assert (await queue.tasks.append(task, 2, ["text"], now_ms())).tokens == 3
    assert await queue.tasks.complete(task, {"text": "the context"}) is WriteResult.OK

    entries = await queue.results.after(task_id, -1)
    assert [e.entry_id for e in entries] == ["0-1", "0-2", "0-3", "1-0"]
    assert [e.index for e in entries[:3]] == [0, 1, 2]
    assert answer(entries) == "the context"
    assert terminal(entries).kind == "done"
    assert terminal(entries).data == {"text": "the context"}
    # the finished task leaves the task stream and the pending list
    assert await queue.redis.xlen(queue.keys.tasks) == 0
    assert await pending_ids(queue) == []
    assert await queue.redis.hget(queue.keys.task(task_id), "state") == b"done"


async def test_last_tokens_and_done_are_written_in_one_call(queue: TaskQueue) -> None:
    task_id = await submit(queue, "in one go")
    task = await start(queue, await claim_one(queue))
    assert (await queue.tasks.append(task, 0, ["in "], now_ms())).tokens == 1
    appended, finished = await queue.tasks.append_and_complete(
        task, 1, ["one ", "go"], now_ms(), {"text": "in one go"}
    )
    assert (appended.result, appended.tokens, finished) == (WriteResult.OK, 3, WriteResult.OK)
    entries = await queue.results.after(task_id, -1)
    assert answer(entries) == "in one go"
    assert terminal(entries).data == {"text": "in one go"}
    assert await queue.redis.hget(queue.keys.task(task_id), "state") == b"done"


async def script_exists_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_the_last_tokens_and_done_cost_one_round_trip_without_script_exists(
    queue: TaskQueue,
) -> None:
    # Script objects in a redis-py pipeline ask SCRIPT EXISTS first: a round trip more, on the
    # path of every answer's last tokens. The scripts go by SHA instead.
    task_id = await submit(queue, "by sha")
    task = await start(queue, await claim_one(queue))
    await queue.tasks.append_and_complete(task, 0, ["by "], now_ms(), {"text": "x", "tokens": 0})
    before = await script_exists_calls(queue.redis)
    other = await start(queue, await claim_one_of(queue, await submit(queue, "another")))
    await queue.tasks.append_and_complete(other, 0, ["another"], now_ms(), {"text": "another"})
    assert await script_exists_calls(queue.redis) == before
    assert await queue.redis.hget(queue.keys.task(task_id), "state") == b"done"


@pytest.mark.parametrize("loaded", ["none", "finish only"])
async def test_last_tokens_and_done_survive_a_flushed_script_cache(
    queue: TaskQueue, loaded: str
) -> None:
    # After a restart (or SCRIPT FLUSH) the scripts are loaded again and the call repeated. With
    # FINISH cached but not APPEND (another process loaded it first), FINISH must not write a
    # `done` over missing tokens: it refuses (`incomplete`), and the repeat writes both.
    task_id = await submit(queue, "flushed cache")
    task = await start(queue, await claim_one(queue))
    await queue.redis.script_flush()
    if loaded == "finish only":
        await queue.redis.script_load(source(Script.FINISH))
    appended, finished = await queue.tasks.append_and_complete(
        task, 0, ["flushed ", "cache"], now_ms(), {"text": "flushed cache", "tokens": 2}
    )
    assert (appended.result, appended.tokens, finished) == (WriteResult.OK, 2, WriteResult.OK)
    entries = await queue.results.after(task_id, -1)
    assert answer(entries) == "flushed cache"
    assert [e.entry_id for e in entries] == ["0-1", "0-2", "1-0"]
    assert terminal(entries).kind == "done"


async def claim_one_of(queue: TaskQueue, task_id: str) -> Claim:
    claim = await claim_one(queue)
    assert claim.task_id == task_id
    return claim


async def test_a_fenced_worker_writes_neither_the_tokens_nor_the_done(queue: TaskQueue) -> None:
    task_id = await submit(queue, "fenced")
    task = await start(queue, await claim_one(queue))
    stale = dataclasses.replace(task, attempt=task.attempt + 1)  # not the attempt Redis holds
    appended, finished = await queue.tasks.append_and_complete(
        stale, 0, ["fenced"], now_ms(), {"text": "fenced"}
    )
    assert (appended.result, finished) == (WriteResult.FENCED, WriteResult.FENCED)
    assert await queue.results.after(task_id, -1) == []
    assert await queue.redis.hget(queue.keys.task(task_id), "state") == b"running"


async def test_results_after_resumes_from_a_token(queue: TaskQueue) -> None:
    task_id = await submit(queue, "a b c")
    task = await start(queue, await claim_one(queue))
    await queue.tasks.append(task, 0, ["a ", "b ", "c"], now_ms())
    assert [e.text for e in await queue.results.after(task_id, 0)] == ["b ", "c"]
    assert await queue.results.after(task_id, 2) == []
    await queue.tasks.complete(task, {})
    assert [e.entry_id for e in await queue.results.after(task_id, 2)] == ["1-0"]


async def test_every_entry_is_announced_on_the_result_channel(queue: TaskQueue) -> None:
    task_id = str(uuid.uuid4())
    pubsub = queue.redis.pubsub()
    await pubsub.subscribe(queue.keys.result(task_id))
    try:
        now = now_ms()
        await queue.tasks.submit(
            task_id, "x", now_ms=now, deadline_ms=now + 60_000, max_queue=100
        )  # fmt: skip
        task = await start(queue, await claim_one(queue))
        tricky = 'quote " backslash \\ newline \n nul \x00 emoji 🎉'
        await queue.tasks.append(task, 0, ["one", tricky], now_ms())
        await queue.tasks.complete(task, {"text": "one" + tricky})
        got: list[ResultEntry] = []
        announcements: list[object] = []

        async def three() -> bool:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg is not None:
                got.extend(ResultEntry.from_announcement(msg["data"]))
                announcements.append(msg)
            return len(got) == 3

        await eventually(three, 5, "three announcements")
    finally:
        await pubsub.aclose()
    assert got == await queue.results.after(task_id, -1)
    assert got[1].text == tricky
    assert len(announcements) == 2  # the tokens of one append are announced together


async def test_submit_refuses_when_the_queue_is_full(queue: TaskQueue) -> None:
    now = now_ms()
    args = {"now_ms": now, "deadline_ms": now + 60_000, "max_queue": 2}
    assert await queue.tasks.submit("t1", "a", **args)
    assert await queue.tasks.submit("t2", "b", **args)
    assert not await queue.tasks.submit("t3", "c", **args)
    assert not await queue.results.task_exists("t3")
    assert await queue.redis.xlen(queue.keys.tasks) == 2


async def test_submit_refuses_a_duplicate_task_id(queue: TaskQueue) -> None:
    now = now_ms()
    args = {"now_ms": now, "deadline_ms": now + 60_000, "max_queue": 10}
    assert await queue.tasks.submit("same", "a", **args)
    with pytest.raises(ResponseError, match="duplicate task id"):
        await queue.tasks.submit("same", "b", **args)
    assert await queue.redis.xlen(queue.keys.tasks) == 1


async def test_submit_records_arrival_times_for_the_window_newest_first(queue: TaskQueue) -> None:
    for i in range(ARRIVALS_KEPT + 3):
        await submit(queue, f"task {i}")
    arrivals = await queue.claims.recent_arrivals()
    assert len(arrivals) == ARRIVALS_KEPT  # capped
    entries = await queue.redis.xrevrange(queue.keys.tasks, count=ARRIVALS_KEPT)
    assert arrivals == [arrival_ms(eid.decode()) for eid, _ in entries]  # Redis's clock
    # a refused submission did not arrive
    now = now_ms()
    args = {"now_ms": now, "deadline_ms": now + 60_000, "max_queue": 1}
    assert not await queue.tasks.submit("refused", "x", **args)
    assert await queue.claims.recent_arrivals() == arrivals


async def unblocks(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_client|unblock", {}).get("calls", 0))


async def test_a_blocking_read_is_ended_at_its_deadline_and_delivers_nothing(
    queue: TaskQueue,
) -> None:
    # Redis would end it only at its next timeout check (every 100 ms with hz 10): the claims
    # end it themselves with CLIENT UNBLOCK ... TIMEOUT
    before = await unblocks(queue.redis)
    assert await queue.claims.read_new("c1", 4, 20) == []
    assert await unblocks(queue.redis) == before + 1
    assert await pending_ids(queue) == []  # the ended read took nothing
    task_id = await submit(queue, "after the window")
    [claim] = await queue.claims.read_new("c1", 4, 20)  # entries end the wait at once
    assert claim.task_id == task_id
    assert await pending_ids(queue) == [claim.entry_id]
    await queue.claims.close()


async def test_blocking_reads_go_on_after_their_connection_was_killed(queue: TaskQueue) -> None:
    assert await queue.claims.read_new("c1", 4, 10) == []
    # the connection of this queue's blocking reads (other clients of a shared Redis block too)
    reader_id = queue.claims._reader_id
    assert reader_id is not None
    assert await queue.redis.client_kill_filter(_id=reader_id) == 1
    # the first read after the kill finds the connection closed (the worker retries it)
    with pytest.raises(RedisConnectionError):
        await queue.claims.read_new("c1", 4, 10)
    before = await unblocks(queue.redis)
    assert await queue.claims.read_new("c1", 4, 10) == []  # ended by the claims again
    assert await unblocks(queue.redis) == before + 1
    task_id = await submit(queue, "after the reconnect")
    [claim] = await queue.claims.read_new("c1", 4, 10)
    assert claim.task_id == task_id
    await queue.claims.close()


async def test_depth_counts_waiting_and_in_flight(queue: TaskQueue) -> None:
    for i in range(3):
        await submit(queue, f"task {i}")
    assert await queue.claims.depth(5000) == QueueDepth(waiting=3, in_flight=0)
    await queue.claims.read_new("c1", 2, None)
    assert await queue.claims.depth(5000) == QueueDepth(waiting=1, in_flight=2)


async def test_append_skips_tokens_already_written_and_refuses_a_gap(queue: TaskQueue) -> None:
    task_id = await submit(queue, "abc")
    task = await start(queue, await claim_one(queue))
    assert (await queue.tasks.append(task, 0, ["a", "b"], now_ms())).tokens == 2
    # the same write again (a retried call) changes nothing
    assert (await queue.tasks.append(task, 0, ["a", "b"], now_ms())).tokens == 2
    # overlapping write: only the new token is added
    assert (await queue.tasks.append(task, 1, ["b", "c"], now_ms())).tokens == 3
    with pytest.raises(ResponseError, match="token gap"):
        await queue.tasks.append(task, 5, ["z"], now_ms())
    assert answer(await queue.results.after(task_id, -1)) == "abc"


async def test_a_stale_attempt_is_fenced_out(queue: TaskQueue) -> None:
    task_id = await submit(queue, "fenced")
    claim = await claim_one(queue, "w1")
    first = await start(queue, claim, "w1")
    assert (await queue.tasks.append(first, 0, ["one "], now_ms())).tokens == 1
    # a takeover after w1's lease ran out
    await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, "w2", 0, [claim.entry_id])
    second = await start(queue, claim, "w2")
    assert second.attempt == 2
    assert second.tokens_written == 1
    assert second.first_token_ms is not None  # kept from the first attempt
    # the new attempt replays from token 0; the token already written is not repeated
    assert (await queue.tasks.append(second, 0, ["one ", "two"], now_ms())).tokens == 2
    assert (await queue.tasks.append(first, 1, ["LATE"], now_ms())).result is WriteResult.FENCED
    assert await queue.tasks.complete(first, {}) is WriteResult.FENCED
    assert await queue.tasks.complete(second, {"ok": True}) is WriteResult.OK
    assert await queue.tasks.complete(second, {"ok": True}) is WriteResult.NOT_RUNNING
    entries = await queue.results.after(task_id, -1)
    assert answer(entries) == "one two"
    assert [e.entry_id for e in entries] == ["0-1", "0-2", "1-0"]


async def test_cancel_before_start_ends_the_task_and_a_worker_never_runs_it(
    queue: TaskQueue,
) -> None:
    task_id = await submit(queue, "never run")
    assert await queue.tasks.cancel(task_id)
    entries = await queue.results.after(task_id, -1)
    assert [e.entry_id for e in entries] == ["1-0"]
    assert entries[0].kind == "error"
    assert entries[0].data is not None and entries[0].data["code"] == "cancelled"
    assert await queue.redis.xlen(queue.keys.tasks) == 0
    assert await queue.claims.read_new("c1", 10, None) == []
    assert not await queue.tasks.cancel(task_id)  # already final


async def test_cancel_after_claim_but_before_start_wins(queue: TaskQueue) -> None:
    task_id = await submit(queue, "claimed")
    claim = await claim_one(queue)
    assert await queue.tasks.cancel(task_id)
    refused = await queue.tasks.start(claim, worker="c1", now_ms=now_ms(), max_attempts=3)
    assert refused == Refused(StartOutcome.FINAL)
    assert await pending_ids(queue) == []
    assert terminal(await queue.results.after(task_id, -1)).data["code"] == "cancelled"  # type: ignore[index]


async def test_cancel_after_start_is_refused(queue: TaskQueue) -> None:
    task_id = await submit(queue, "running")
    task = await start(queue, await claim_one(queue))
    assert not await queue.tasks.cancel(task_id)
    assert (await queue.tasks.append(task, 0, ["running"], now_ms())).tokens == 1
    assert await queue.results.after(task_id, -1) != []


async def test_expire_ends_a_running_task_and_fences_its_worker(queue: TaskQueue) -> None:
    task_id = await submit(queue, "slow")
    task = await start(queue, await claim_one(queue))
    await queue.tasks.append(task, 0, ["slo"], now_ms())
    assert await queue.tasks.expire(task_id, "deadline passed")
    assert (await queue.tasks.append(task, 1, ["w"], now_ms())).result is WriteResult.NOT_RUNNING
    assert await queue.tasks.complete(task, {}) is WriteResult.NOT_RUNNING
    assert not await queue.tasks.expire(task_id, "again")
    entries = await queue.results.after(task_id, -1)
    assert [e.entry_id for e in entries] == ["0-1", "1-0"]
    assert entries[-1].data == {"code": "timeout", "message": "deadline passed"}
    assert await pending_ids(queue) == []


async def test_start_after_the_deadline_ends_with_timeout(queue: TaskQueue) -> None:
    task_id = str(uuid.uuid4())
    now = now_ms()
    await queue.tasks.submit(task_id, "late", now_ms=now - 5000, deadline_ms=now - 1, max_queue=10)
    claim = await claim_one(queue)
    refused = await queue.tasks.start(claim, worker="c1", now_ms=now_ms(), max_attempts=3)
    assert refused == Refused(StartOutcome.TIMEOUT)
    done = terminal(await queue.results.after(task_id, -1))
    assert done.kind == "error"
    assert done.data is not None and done.data["code"] == "timeout"
    assert await queue.redis.xlen(queue.keys.tasks) == 0
    assert await pending_ids(queue) == []


async def test_a_task_delivered_max_attempts_times_is_dead_lettered(queue: TaskQueue) -> None:
    task_id = await submit(queue, "poison")
    claim = await claim_one(queue)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert (await start(queue, claim)).attempt == attempt
    await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, "c2", 0, [claim.entry_id])
    refused = await queue.tasks.start(claim, worker="c2", now_ms=now_ms(), max_attempts=3)
    assert refused == Refused(StartOutcome.DEAD)
    done = terminal(await queue.results.after(task_id, -1))
    assert done.kind == "error"
    assert done.data is not None and done.data["code"] == "dead_letter"
    assert str(MAX_ATTEMPTS) in done.data["message"]
    [dead] = await queue.dead_letters.entries()
    assert (dead.task_id, dead.code, dead.attempts) == (task_id, "dead_letter", MAX_ATTEMPTS)
    assert dead.worker == "c1"  # the worker of its last attempt
    assert dead.message == done.data["message"] and dead.preview == "poison"
    assert await queue.redis.xlen(queue.keys.tasks) == 0


async def test_an_attempt_handed_back_on_stop_does_not_count(queue: TaskQueue) -> None:
    await submit(queue, "scaled down again and again")
    claim = await claim_one(queue)
    for attempt in range(1, 2 * MAX_ATTEMPTS + 1):
        # Another worker each time, holding the entry as a takeover gives it (START checks).
        await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, f"w{attempt}", 0, [claim.entry_id])
        task = await start(queue, claim, worker=f"w{attempt}")
        assert (task.attempt, task.counted) == (attempt, 1)  # the fence still goes up
        assert await queue.tasks.hand_back(task.task_id, task.attempt)
        assert not await queue.tasks.hand_back(task.task_id, task.attempt)  # a retry: once only
    await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, "c1", 0, [claim.entry_id])
    task = await start(queue, claim)
    assert not await queue.tasks.hand_back(task.task_id, task.attempt - 1)  # an older attempt
    await queue.tasks.complete(task, {"tokens": 0})
    assert not await queue.tasks.hand_back(task.task_id, task.attempt)  # it ended


async def test_handed_back_attempts_leave_real_failures_bounded(queue: TaskQueue) -> None:
    task_id = await submit(queue, "handed back once, then crashing")
    claim = await claim_one(queue)
    handed = await start(queue, claim)
    assert await queue.tasks.hand_back(task_id, handed.attempt)
    counted = [(await start(queue, claim)).counted for _ in range(MAX_ATTEMPTS)]
    assert counted == [1, 2, 3]  # takeovers after a crash count
    await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, "c2", 0, [claim.entry_id])
    refused = await queue.tasks.start(claim, worker="c2", now_ms=now_ms(), max_attempts=3)
    assert refused == Refused(StartOutcome.DEAD)
    dead = await queue.redis.xrange(queue.keys.dead)
    assert dead[0][1][b"attempts"] == str(MAX_ATTEMPTS).encode()


async def test_start_of_a_task_redis_forgot_drops_its_entry(queue: TaskQueue) -> None:
    task_id = await submit(queue, "forgotten")
    claim = await claim_one(queue)
    await queue.redis.delete(queue.keys.task(task_id))
    refused = await queue.tasks.start(claim, worker="c1", now_ms=now_ms(), max_attempts=3)
    assert refused == Refused(StartOutcome.MISSING)
    assert await queue.redis.xlen(queue.keys.tasks) == 0
    assert await pending_ids(queue) == []


async def test_renew_keeps_a_lease_and_reports_lost_entries(queue: TaskQueue) -> None:
    await submit(queue, "one")
    await submit(queue, "two")
    mine = await queue.claims.read_new("c1", 10, None)
    assert len(mine) == 2
    # c2 takes the first one over (as after a lease ran out)
    await queue.redis.xclaim(queue.keys.tasks, WORKER_GROUP, "c2", 0, [mine[0].entry_id])
    assert await queue.claims.renew("c1", [c.entry_id for c in mine]) == [mine[0].entry_id]
    assert await queue.claims.renew("c1", []) == []


async def test_an_entry_idle_for_a_lease_is_taken_over(queue: TaskQueue) -> None:
    task_id = await submit(queue, "orphan")
    await claim_one(queue, "dead-worker")
    assert await queue.claims.reclaim_expired("c2", 10, lease_ms=60_000) == []
    claims: list[Claim] = []

    async def taken_over() -> bool:
        claims.extend(await queue.claims.reclaim_expired("c2", 10, lease_ms=200))
        return bool(claims)

    await eventually(taken_over, 5, "the entry to be idle for a lease")
    assert [c.task_id for c in claims] == [task_id]
    rows = await queue.redis.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 10)
    assert rows[0]["consumer"] == b"c2"


async def test_renewed_entries_are_not_taken_over(queue: TaskQueue) -> None:
    await submit(queue, "held")
    claim = await claim_one(queue, "alive")
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        assert await queue.claims.renew("alive", [claim.entry_id]) == []
        assert await queue.claims.reclaim_expired("thief", 10, lease_ms=300) == []
        await asyncio.sleep(0.05)


async def test_released_entries_are_taken_over_at_once(queue: TaskQueue) -> None:
    task_id = await submit(queue, "handed back")
    claim = await claim_one(queue, "leaving")
    await queue.claims.release("leaving", [claim.entry_id], lease_ms=60_000)
    claims = await queue.claims.reclaim_expired("c2", 10, lease_ms=60_000)
    assert [c.task_id for c in claims] == [task_id]


async def test_a_finished_entry_is_never_taken_over(queue: TaskQueue) -> None:
    await submit(queue, "finished")
    task = await start(queue, await claim_one(queue, "w1"), "w1")
    await queue.tasks.complete(task, {})
    await queue.claims.release("w1", [task.entry_id], lease_ms=100)
    assert await queue.claims.reclaim_expired("c2", 10, lease_ms=0) == []


async def test_results_and_task_expire_after_the_ttl(redis: Redis, key_prefix: str) -> None:
    queue = make_queue(redis, key_prefix, ttl_s=30)
    await queue.claims.ensure_group()
    task_id = await submit(queue, "ttl")
    task = await start(queue, await claim_one(queue))
    await queue.tasks.append(task, 0, ["ttl"], now_ms())
    await queue.tasks.complete(task, {})
    for key in (queue.keys.task(task_id), queue.keys.result(task_id)):
        assert 0 < await redis.pttl(key) <= 30_000


async def test_heartbeats_count_live_workers(queue: TaskQueue) -> None:
    now = now_ms()
    await queue.claims.heartbeat("w1", now, lease_ms=1000, break_ms=500)
    await queue.claims.heartbeat("w2", now - 5000, lease_ms=1000, break_ms=500)
    assert await queue.claims.live_workers(now, lease_ms=1000) == 1
    # forgets workers silent for ten leases
    await queue.claims.heartbeat("w3", now, lease_ms=400, break_ms=500)
    assert await queue.redis.zscore(queue.keys.workers, "w2") is None
    await queue.claims.leave("w1")
    assert await queue.claims.live_workers(now, lease_ms=1000) == 1
    # w1 left; a silent worker's heartbeat is take_over_dead's to forget (test_takeover.py)
    assert sorted(await queue.redis.hkeys(queue.keys.beats)) == [b"w2", b"w3"]


async def test_group_is_recreated_after_it_vanished(queue: TaskQueue) -> None:
    await queue.redis.delete(queue.keys.tasks)
    assert await queue.claims.read_new("c1", 1, None) == []
    assert await queue.claims.reclaim_expired("c1", 1, 100) == []
    task_id = await submit(queue, "after a restart")
    assert (await claim_one(queue)).task_id == task_id
