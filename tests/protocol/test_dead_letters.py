"""Dead letters (protocol/dead_letters.py) and idempotent submits, against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import DEAD_LETTER_MAXLEN
from llm_batcher.protocol.outcomes import ErrorCode, RequeueOutcome, StartOutcome, SubmitOutcome
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import Once, Refused, StartedTask
from tests.support.results import dead_letter, make_queue, start_next, submit, terminal

RESULT_TTL_S = 600


@pytest.fixture
async def queue(redis: Redis, key_prefix: str) -> TaskQueue:
    q = make_queue(redis, key_prefix, ttl_s=RESULT_TTL_S)
    await q.claims.ensure_group()
    return q


async def test_a_task_the_llm_failed_is_a_dead_letter_with_its_error_and_preview(
    queue: TaskQueue,
) -> None:
    task_id = await dead_letter(queue, "poison " * 30, tokens=("p0 ", "p1 "))
    [dead] = await queue.dead_letters.entries()
    assert dead.task_id == task_id
    assert (dead.code, dead.attempts, dead.worker, dead.tokens) == ("llm_crashed", 1, "w1", 2)
    assert dead.message == f"the LLM failed; see batch b-{task_id[:4]}"
    assert dead.preview.startswith("poison poison") and dead.preview.endswith("…")
    assert dead.context_bytes == len("poison " * 30)
    assert abs(dead.dead_ms - now_ms()) < 5000
    assert await queue.dead_letters.get(task_id) == dead
    assert await queue.dead_letters.get(str(uuid.uuid4())) is None
    # ...and logged in the dead-letter stream, which the operator follows.
    [(_, fields)] = await queue.redis.xrange(queue.keys.dead)
    assert fields[b"task_id"] == task_id.encode() and fields[b"code"] == b"llm_crashed"
    assert (fields[b"attempts"], fields[b"worker"]) == (b"1", b"w1")


async def test_tasks_ended_by_their_client_or_deadline_are_not_dead_letters(
    queue: TaskQueue,
) -> None:
    cancelled = await submit(queue, "cancelled")
    assert await queue.tasks.cancel(cancelled)
    expired = await submit(queue, "expired")
    assert await queue.tasks.expire(expired, "too late")
    done = await submit(queue, "done")
    task = await start_next(queue)
    await queue.tasks.complete(task, {"text": ""})
    assert task.task_id == done
    assert await queue.dead_letters.entries() == []


async def test_a_requeued_task_runs_afresh_under_its_id(queue: TaskQueue) -> None:
    task_id = await dead_letter(queue, "second chance", tokens=("old ",))
    before = await queue.redis.hmget(queue.keys.task(task_id), "created_ms", "deadline_ms")
    timeout_ms = int(before[1]) - int(before[0])
    later = now_ms() + 1000
    requeued = await queue.dead_letters.requeue(task_id, now_ms=later, max_queue=10)
    assert requeued.outcome is RequeueOutcome.OK
    assert requeued.deadline_ms == later + timeout_ms  # as long a deadline as the first run
    # Its old answer is gone: a client reading it from the start waits for the new run.
    assert await queue.results.after(task_id, -1) == []
    assert await queue.dead_letters.entries() == []
    resumable = await queue.results.resumable(task_id)
    assert resumable is not None and resumable.deadline_ms == requeued.deadline_ms
    task = await start_next(queue)
    assert (task.task_id, task.attempt, task.tokens_written) == (task_id, 1, 0)
    assert task.context == "second chance"
    await queue.tasks.append(task, 0, ["new ", "answer"], now_ms())
    await queue.tasks.complete(task, {"text": "new answer", "tokens": 2})
    entries = await queue.results.after(task_id, -1)
    assert [e.text for e in entries[:-1]] == ["new ", "answer"]
    assert terminal(entries).kind == "done"
    assert await queue.redis.hget(queue.keys.task(task_id), "requeues") == b"1"


async def handed_back_then_failed(queue: TaskQueue, context: str) -> str:
    """A task whose first attempt was handed back (a worker's orderly stop) and whose second
    failed; returns its id."""
    task_id = await submit(queue, context)
    (claim,) = await queue.claims.read_new("w1", 1, None)
    first = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=2)
    assert isinstance(first, StartedTask)
    assert await queue.tasks.hand_back(task_id, first.attempt)
    second = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=2)
    assert isinstance(second, StartedTask) and second.attempt == 2
    await queue.tasks.fail(second, ErrorCode.LLM_CRASHED, "the LLM failed")
    return task_id


async def test_a_dead_letter_counts_its_attempts_as_max_attempts_does(queue: TaskQueue) -> None:
    """An attempt handed back does not count against max_attempts, nor in the dead letter's
    attempts (`llm-batcher dlq` counted it, where the dead-letter stream did not)."""
    task_id = await handed_back_then_failed(queue, "handed back once")
    [dead] = await queue.dead_letters.entries()
    assert (dead.task_id, dead.attempts, dead.handed_back) == (task_id, 1, 1)
    [(_, fields)] = await queue.redis.xrange(queue.keys.dead)
    assert fields[b"attempts"] == b"1"


async def test_a_requeued_task_gets_max_attempts_afresh_whatever_was_handed_back(
    queue: TaskQueue,
) -> None:
    """The first run's hand-backs are not the new run's: they neither add to its attempts (with
    max_attempts=1, its failed first attempt is its last) nor fence out its own hand-back."""
    task_id = await handed_back_then_failed(queue, "again")
    requeued = await queue.dead_letters.requeue(task_id, now_ms=now_ms(), max_queue=10)
    assert requeued.outcome is RequeueOutcome.OK
    (claim,) = await queue.claims.read_new("w1", 1, None)
    first = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=1)
    assert isinstance(first, StartedTask) and first.attempt == 1
    assert await queue.tasks.hand_back(task_id, 1)  # refunded: an orderly stop
    second = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=1)
    assert isinstance(second, StartedTask) and second.attempt == 2
    # its batch failed: the retry is a third attempt, the second that counts
    third = await queue.tasks.start(claim, worker="w1", now_ms=now_ms(), max_attempts=1)
    assert isinstance(third, Refused) and third.outcome is StartOutcome.DEAD
    [dead] = await queue.dead_letters.entries()
    assert (dead.task_id, dead.code, dead.attempts, dead.handed_back) == (
        task_id, "dead_letter", 1, 1,
    )  # fmt: skip


async def test_only_a_dead_letter_can_be_requeued_and_only_once(queue: TaskQueue) -> None:
    task_id = await dead_letter(queue, "once")
    now = now_ms()
    first = await queue.dead_letters.requeue(task_id, now_ms=now, max_queue=10)
    second = await queue.dead_letters.requeue(task_id, now_ms=now, max_queue=10)
    unknown = await queue.dead_letters.requeue(str(uuid.uuid4()), now_ms=now, max_queue=10)
    assert [first.outcome, second.outcome, unknown.outcome] == [
        RequeueOutcome.OK,
        RequeueOutcome.NOT_DEAD,
        RequeueOutcome.NOT_DEAD,
    ]
    assert await queue.redis.xlen(queue.keys.tasks) == 1


async def test_a_requeue_into_a_full_queue_leaves_the_dead_letter(queue: TaskQueue) -> None:
    task_id = await dead_letter(queue, "waits")
    await submit(queue, "fills the queue")
    requeued = await queue.dead_letters.requeue(task_id, now_ms=now_ms(), max_queue=1)
    assert requeued.outcome is RequeueOutcome.QUEUE_FULL
    assert [d.task_id for d in await queue.dead_letters.entries()] == [task_id]


async def test_purge_deletes_every_dead_letter_and_says_how_many(queue: TaskQueue) -> None:
    ids = [await dead_letter(queue, f"poison {i}", tokens=("t ",)) for i in range(3)]
    kept = await submit(queue, "not a dead letter")
    assert await queue.dead_letters.purge() == 3
    assert await queue.dead_letters.entries() == []
    for task_id in ids:
        assert not await queue.redis.exists(queue.keys.task(task_id), queue.keys.result(task_id))
    assert await queue.results.task_exists(kept)
    assert await queue.dead_letters.purge() == 0


async def test_the_index_keeps_the_newest_dead_letters_and_only_their_contexts(
    queue: TaskQueue,
) -> None:
    ids = [await dead_letter(queue, f"poison {i}") for i in range(DEAD_LETTER_MAXLEN + 2)]
    listed = await queue.dead_letters.ids()
    assert listed == ids[::-1][:DEAD_LETTER_MAXLEN]  # newest first
    for old in ids[:2]:
        assert not await queue.redis.hexists(queue.keys.task(old), "context")
        requeued = await queue.dead_letters.requeue(old, now_ms=now_ms(), max_queue=10)
        assert requeued.outcome is RequeueOutcome.NOT_DEAD
    assert await queue.redis.hexists(queue.keys.task(ids[2]), "context")


# --- idempotent submits -------------------------------------------------------------------------


async def submit_once(
    queue: TaskQueue, key: str, fingerprint: str, owner: str = "", context: str = "ctx"
) -> tuple[str, SubmitOutcome, str]:
    """(the id it tried, the outcome, the id it got)."""
    task_id = str(uuid.uuid4())
    now = now_ms()
    submitted = await queue.tasks.submit_once(
        Once(queue.keys.idempotency(owner, key), fingerprint),
        task_id,
        context,
        now_ms=now,
        deadline_ms=now + 30_000,
        max_queue=100,
        owner=owner,
    )
    return task_id, submitted.outcome, submitted.task_id


async def test_a_retried_submit_gets_the_first_task(queue: TaskQueue) -> None:
    first_try, first, first_id = await submit_once(queue, "k1", "body-a")
    _, again, again_id = await submit_once(queue, "k1", "body-a")
    assert (first, first_id) == (SubmitOutcome.QUEUED, first_try)
    assert (again, again_id) == (SubmitOutcome.EXISTING, first_try)
    assert await queue.redis.xlen(queue.keys.tasks) == 1
    ttl = await queue.redis.pttl(queue.keys.idempotency("", "k1"))
    assert 0 < ttl <= RESULT_TTL_S * 1000


async def test_the_same_key_for_another_request_is_a_conflict(queue: TaskQueue) -> None:
    first_try, _, _ = await submit_once(queue, "k1", "body-a")
    _, outcome, task_id = await submit_once(queue, "k1", "body-b")
    assert (outcome, task_id) == (SubmitOutcome.CONFLICT, first_try)
    assert await queue.redis.xlen(queue.keys.tasks) == 1


async def test_keys_are_per_client(queue: TaskQueue) -> None:
    _, mine, my_task = await submit_once(queue, "k1", "body-a", owner="alice")
    _, theirs, their_task = await submit_once(queue, "k1", "body-a", owner="mallory")
    assert (mine, theirs) == (SubmitOutcome.QUEUED, SubmitOutcome.QUEUED)
    assert my_task != their_task


async def test_concurrent_retries_make_one_task(queue: TaskQueue) -> None:
    results = await asyncio.gather(*(submit_once(queue, "race", "body") for _ in range(8)))
    assert len({got for _, _, got in results}) == 1
    assert sorted(o for _, o, _ in results).count(SubmitOutcome.QUEUED) == 1
    assert await queue.redis.xlen(queue.keys.tasks) == 1


async def test_a_key_whose_task_expired_queues_a_new_one(queue: TaskQueue) -> None:
    first_try, _, _ = await submit_once(queue, "k1", "body-a")
    await queue.redis.delete(queue.keys.task(first_try))
    second_try, outcome, task_id = await submit_once(queue, "k1", "body-a")
    assert (outcome, task_id) == (SubmitOutcome.QUEUED, second_try)
