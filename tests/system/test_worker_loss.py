"""Losing a worker at awkward moments, with the real processes: paused mid-batch until another
worker takes its tasks over (fencing), or killed while it holds the read turn. Every client still
gets its exact answer, once, and no LLM runs on for a worker that lost its tasks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
import psutil
import pytest
from redis.asyncio import Redis

from llm_batcher.protocol.keys import WORKER_GROUP
from llm_batcher.protocol.queue import TaskQueue
from tests.support.metrics import scrape, value
from tests.support.processes import Stack, Worker, alive, llm_children, start_together
from tests.support.results import (
    WHOLE_ANSWER,
    assert_complete_answer,
    make_queue,
    tokens_written,
)
from tests.support.sse import STREAM_TIMEOUT_S, Stream, read_sse, words
from tests.support.waiting import eventually, while_clients_run

pytestmark = pytest.mark.system

# One batch of 3 (it starts when full). argv: no spare LLM waits beside the batch's, so the
# batch's LLM is the only llm-mock below its worker.
SETTINGS = {"window_ms": 2000, "max_batch": 3, "llm_files": "argv"}


def follow(client: httpx.AsyncClient, api_url: str, context: str, into: Stream) -> asyncio.Task:
    """A client reading one /generate answer in the background."""
    url, params = f"{api_url}/generate", {"context": context}
    return asyncio.create_task(read_sse(client, "GET", url, into=into, params=params))


async def run_by(queue: TaskQueue, task_id: str) -> tuple[str, int]:
    """The worker of the task's latest attempt, and that attempt's number."""
    worker, attempt = await queue.redis.hmget(queue.keys.task(task_id), ["worker", "attempt"])
    return (worker or b"").decode(), int(attempt or 0)


@contextlib.asynccontextmanager
async def paused_until_taken_over(
    stack: Stack, victim: Worker, queue: TaskQueue, task_ids: list[str], **settings: object
) -> AsyncIterator[Worker]:
    """SIGSTOP ``victim``, start another worker with ``settings`` and wait until it runs every
    one of ``task_ids`` (a new attempt); the block runs then, and SIGCONT follows it."""
    victim.proc.signal(signal.SIGSTOP)
    try:
        survivor = await stack.worker(**settings)

        async def taken_over() -> bool:
            return all([await run_by(queue, t) == (survivor.id, 2) for t in task_ids])

        await eventually(taken_over, 15, "the other worker to take the tasks over")
        yield survivor
    finally:
        victim.proc.signal(signal.SIGCONT)


async def stopped_its_llm(worker: Worker, mocks: list[psutil.Process]) -> None:
    """Wait until ``worker`` has stopped its batch and the batch's LLM ``mocks`` exited; none
    is left below it."""
    stopping = "no task is this worker's any more; stopping it"
    await eventually(lambda: stopping in worker.proc.log(), 10, "the worker to stop its batch")
    await eventually(lambda: not alive(mocks), 10, "the batch's llm-mock to exit")
    assert llm_children(worker.proc.pid) == []


async def test_a_worker_paused_until_taken_over_is_fenced_out_and_stops_its_llm(
    stack: Stack, client: httpx.AsyncClient, redis: Redis, key_prefix: str
) -> None:
    """SIGSTOP a worker mid-batch, let another worker take its tasks over, then SIGCONT it: its
    LLM ran on meanwhile, and every write of that output is refused (fenced); it stops that LLM
    long before its end, and each client sees one clean answer, from the new attempt."""
    # The paused worker's LLM would take 30 s (150 tokens of 200 ms), the other's 7.5 s. Its
    # long lease: its first renewal is due 20 s after its start, after it resumed, so that the
    # refusal of a write is how it learns the tasks are gone (a renewal first would stop the
    # batch before it writes; the next test).
    api, victim = await start_together(
        stack.api(), stack.worker(mock_itl_ms=200, lease_ms=60_000, **SETTINGS)
    )
    await stack.wait_ready(api)
    queue = make_queue(redis, key_prefix)
    bodies = [f"client {i}: {words(150, f'p{i}-w')}" for i in range(3)]  # echoed
    answers = [Stream() for _ in bodies]
    clients = [follow(client, api.url, b, a) for b, a in zip(bodies, answers, strict=True)]
    try:
        await while_clients_run(
            lambda: all(len(a.tokens) >= 3 for a in answers), clients, 15, "3 tokens everywhere"
        )
        task_ids = [a.task_id for a in answers]
        mocks = llm_children(victim.proc.pid)
        assert len(mocks) == 1, mocks
        async with paused_until_taken_over(
            stack, victim, queue, task_ids, mock_itl_ms=50, **SETTINGS
        ) as survivor:
            # at least what the paused worker wrote: the survivor writes only past that
            written_when_taken = sum([await tokens_written(queue, t) for t in task_ids])
            assert alive(mocks), "the paused worker's LLM ended before the worker resumed"
        # Resumed, it learns from its refused writes that the tasks are no longer its own and
        # stops the LLM it left running, while the survivor's attempt runs on.
        fenced = [f"task {t} is no longer this worker's (fenced)" for t in task_ids]
        await while_clients_run(
            lambda: all(line in victim.proc.log() for line in fenced), clients, 15, "refusals"
        )
        await stopped_its_llm(victim, mocks)
        await asyncio.wait_for(asyncio.gather(*clients), STREAM_TIMEOUT_S)
    finally:
        for task in clients:
            task.cancel()

    for answer, body in zip(answers, bodies, strict=True):
        done = answer.assert_exact(body)  # ids 0..n-1 in order, no repeat, one `done`, last
        assert (done["worker"], done["attempt"]) == (survivor.id, 2), done
        assert answer.connections == 1
        # the result stream itself, as any later reader gets it
        entries = await queue.results.after(answer.task_id, -1, count=WHOLE_ANSWER)
        assert_complete_answer(entries, body)
    # not one token of what its LLM wrote while it was paused got through; and it runs on
    samples = await scrape(f"http://127.0.0.1:{victim.port}/metrics")
    assert value(samples, "llm_batcher_tokens_relayed_total") <= written_when_taken
    assert victim.proc.popen.poll() is None


async def test_a_paused_worker_whose_llm_is_silent_stops_it_when_its_renewal_finds_it_lost(
    stack: Stack, client: httpx.AsyncClient, redis: Redis, key_prefix: str
) -> None:
    """The same pause, while the LLM has written nothing yet (a long prefill; a hang looks the
    same): there is no write to refuse, so the worker's next lease renewal, which finds the tasks
    gone, must stop the LLM, or it would hold the worker until the batch deadline."""
    api, victim = await start_together(
        stack.api(),
        stack.worker(mock_ttft_ms=60_000, **SETTINGS),  # a minute to its first token
    )
    await stack.wait_ready(api)
    queue = make_queue(redis, key_prefix)
    bodies = [f"silent {i}: {words(10, f's{i}-w')}" for i in range(3)]
    answers = [Stream() for _ in bodies]
    clients = [follow(client, api.url, b, a) for b, a in zip(bodies, answers, strict=True)]
    try:
        await while_clients_run(lambda: all(a.events for a in answers), clients, 10, "3 tasks")
        task_ids = [a.task_id for a in answers]

        async def llm_started() -> bool:
            runs = [await run_by(queue, t) for t in task_ids]
            return runs == [(victim.id, 1)] * 3 and bool(llm_children(victim.proc.pid))

        await eventually(llm_started, 10, "the batch's LLM to start")
        mocks = llm_children(victim.proc.pid)
        async with paused_until_taken_over(stack, victim, queue, task_ids, **SETTINGS) as survivor:
            pass
        await stopped_its_llm(victim, mocks)
        await asyncio.wait_for(asyncio.gather(*clients), STREAM_TIMEOUT_S)
    finally:
        for task in clients:
            task.cancel()

    log = victim.proc.log()
    for answer, body in zip(answers, bodies, strict=True):
        done = answer.assert_exact(body)
        assert (done["worker"], done["attempt"]) == (survivor.id, 2), done
        assert f"task {answer.task_id} is no longer this worker's (not held)" in log


async def test_a_worker_killed_holding_the_read_turn_holds_up_reads_until_its_heartbeat_lapses(
    stack: Stack, client: httpx.AsyncClient, redis: Redis, key_prefix: str
) -> None:
    """Idle workers take turns at reading new tasks (keys.reader, a key with an expiry). A
    worker killed while it holds the turn never ends it: the other worker reads nothing until
    the dead worker's heartbeat lapses, then takes the turn (long before it would expire) and
    serves the dead worker's task and those queued meanwhile."""
    # A long fixed window and batches of 3: the worker that reads a lone task holds the read
    # turn through the window (and a turn lasts the window and 1.5 s more), waiting for more.
    # That is the state this test kills it in.
    window_ms, heartbeat_timeout_ms = 6000, 1500
    settings = {
        "window_ms": window_ms,
        "max_batch": 3,
        "heartbeat_timeout_ms": heartbeat_timeout_ms,
    }
    api, *workers = await start_together(stack.api(), *(stack.worker(**settings) for _ in range(2)))
    await stack.wait_ready(api)
    queue = make_queue(redis, key_prefix)
    bodies = [f"request {i}: {words(6, f't{i}-w')}" for i in range(3)]
    answers = [Stream() for _ in bodies]
    clients = [follow(client, api.url, bodies[0], answers[0])]
    try:
        await while_clients_run(lambda: bool(answers[0].events), clients, 10, "the first task")
        turns: list[tuple[bytes, int]] = []

        async def in_window() -> bool:
            """Whether the worker holding the read turn holds the first task (it waits for
            more); notes the holder and when its turn expires, by Redis's clock."""
            async with redis.pipeline(transaction=True) as pipe:
                pipe.time().get(queue.keys.reader).pttl(queue.keys.reader)
                pipe.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 10)
                (seconds, micros), holder, ttl_ms, pending = await pipe.execute()
            if holder is None or [r["consumer"] for r in pending] != [holder]:
                return False
            turns.append((holder, seconds * 1000 + micros // 1000 + ttl_ms))
            return True

        await eventually(in_window, 10, "a worker to hold the read turn and the first task")
        holder, expires_ms = turns[-1]
        victim = next(w for w in workers if w.id.encode() == holder)
        survivor = next(w for w in workers if w is not victim)
        victim.proc.kill_group()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.get(queue.keys.reader).hget(queue.keys.beats, victim.id)
            turn_holder, beat = await pipe.execute()
        assert turn_holder == holder  # a dead worker's turn
        last_beat_ms = int(beat.split(b",")[0])
        clients += [follow(client, api.url, bodies[i], answers[i]) for i in (1, 2)]
        await asyncio.wait_for(asyncio.gather(*clients), STREAM_TIMEOUT_S)
    finally:
        for task in clients:
            task.cancel()

    started_ms = []
    for answer, body in zip(answers, bodies, strict=True):
        done = answer.assert_exact(body)
        assert (done["worker"], done["attempt"]) == (survivor.id, 1), done  # the victim ran none
        created_ms, attempt_ms = await redis.hmget(
            queue.keys.task(answer.task_id), ["created_ms", "attempt_ms"]
        )
        # queued while the dead worker's turn stood; started only once its heartbeat had
        # lapsed, and before its turn would have expired (Redis's clock, in ms)
        assert int(created_ms) < expires_ms, (created_ms, expires_ms)
        assert last_beat_ms + heartbeat_timeout_ms < int(attempt_ms) < expires_ms, (
            last_beat_ms,
            attempt_ms,
            expires_ms,
        )
        started_ms.append(int(attempt_ms))
    print(
        f"\nMEASURED started_after_the_last_beat_ms={max(started_ms) - last_beat_ms}"
        f" turn_left_ms={expires_ms - max(started_ms)}"
    )
