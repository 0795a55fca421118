"""LLM failures (exit, hang, garbage) become the right error codes, and a poison context fails
alone while its batch-mates complete (the rules in worker/batch.py's docstring)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.keys import token_entry_id
from tests.support.contexts import FAST
from tests.support.processes import llm_children, running_worker
from tests.support.results import (
    answer,
    assert_complete_answer,
    assert_error,
    make_queue,
    submit,
    wait_result,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


async def attempt_of(redis: Redis, key: str) -> int:
    return int(await redis.hget(key, "attempt"))


async def test_exit_before_any_token_is_llm_crashed(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        poison = await submit(queue, "@mock ttft_ms=0 fail=exit fail_after=0\nnever said")
        entries = await wait_result(queue, poison)
        # the worker survives its LLM's crash and serves the next task
        after = await submit(queue, f"{FAST}still here")
        assert_complete_answer(await wait_result(queue, after), "still here")
    error = assert_error(entries, "llm_crashed")
    assert entries[:-1] == []
    assert "exited with status 3" in str(error["message"])
    assert "after 0 tokens" in str(error["message"])
    assert await attempt_of(redis, queue.keys.task(poison)) == 1  # alone: not retried


async def test_exit_after_two_tokens_errors_after_exactly_two(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    body = "alpha beta gamma delta epsilon"
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0) as (worker, _):
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=50 fail=exit fail_after=2\n{body}")
        entries = await wait_result(queue, task_id)
        # the tail of the LLM's stderr, which names the cause, is in the worker's log
        await eventually(lambda: "fail=exit" in worker.log(), 5, "the stderr tail in the log")
    error = assert_error(entries, "llm_crashed")
    assert [e.entry_id for e in entries[:-1]] == [token_entry_id(0), token_entry_id(1)]
    assert answer(entries) == "alpha beta "
    message = str(error["message"])
    assert "exited with status 3" in message
    assert "see the worker log of batch " in message
    assert message.endswith("(after 2 tokens)")


async def test_hang_is_killed_at_the_batch_deadline(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    # Without a spare child, so that no LLM is left after the batch (tests/worker/test_spare.py).
    worker_ctx = running_worker(
        redis_url, key_prefix, tmp_path, window_ms=0, batch_timeout_s=2, llm_files="argv"
    )
    async with worker_ctx as (worker, _):
        task_id = await submit(queue, "@mock ttft_ms=0 itl_ms=0 fail=hang fail_after=1\nstuck here")
        await eventually(lambda: len(llm_children(worker.pid)) == 1, 10, "the hung LLM to run")
        hung = llm_children(worker.pid)[0]
        entries = await wait_result(queue, task_id, timeout_s=15)
        error = assert_error(entries, "llm_timeout")
        assert "did not finish within the batch deadline" in str(error["message"])
        assert str(error["message"]).endswith("(after 1 tokens)")
        assert answer(entries) == "stuck "
        await eventually(lambda: not hung.is_running(), 5, "the hung LLM to be gone")
        assert llm_children(worker.pid) == []
        after = await submit(queue, f"{FAST}next one")
        assert_complete_answer(await wait_result(queue, after), "next one")


async def test_garbage_output_is_llm_bad_output(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        task_id = await submit(queue, "@mock ttft_ms=0 itl_ms=0 fail=garbage\nnot parsed")
        entries = await wait_result(queue, task_id)
    error = assert_error(entries, "llm_bad_output")
    assert "malformed output" in str(error["message"])
    assert entries[:-1] == []


async def test_a_poison_context_fails_alone_and_its_batch_mates_complete(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    later = "@mock ttft_ms=300 itl_ms=0\n"
    bodies = ["first mate", "POISON", "third mate", "fourth mate"]
    contexts = [f"{later}{b}" for b in bodies]
    contexts[1] = "@mock ttft_ms=0 fail=exit\nPOISON"
    ids = [await submit(queue, c) for c in contexts]
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=3000):
        results = [await wait_result(queue, t) for t in ids]

    error = assert_error(results[1], "llm_crashed")
    assert results[1][:-1] == []
    assert "exited with status 3" in str(error["message"])
    # the poison ran in the batch of four, then alone
    assert await attempt_of(redis, queue.keys.task(ids[1])) == 2
    batch_ids = set()
    for i in (0, 2, 3):
        done = assert_complete_answer(results[i], bodies[i])
        assert done.data is not None
        # no token reached Redis before the crash, so each was retried alone and completed
        assert done.data["attempt"] == 2
        assert done.data["batch_size"] == 1
        batch_ids.add(done.data["batch_id"])
    assert len(batch_ids) == 3


async def test_a_poison_mid_stream_cuts_only_the_streams_already_started(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Poison crashes at 300 ms after 2 tokens. A mate that finished before survives as done, a
    mate cut mid-stream ends with an error naming the cause (never a truncated `done`), and a
    mate with no token yet is retried alone and completes."""
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    streaming_body = "s0 s1 s2 s3 s4 s5 s6 s7 s8 s9"
    contexts = {
        "finished": f"{FAST}short answer",
        "streaming": f"@mock ttft_ms=0 itl_ms=110\n{streaming_body}",
        "poison": "@mock ttft_ms=0 itl_ms=150 fail=exit fail_after=2\np0 p1 p2 p3 p4",
        "waiting": "@mock ttft_ms=1000 itl_ms=0\nnot started yet",
    }
    ids = {name: await submit(queue, text) for name, text in contexts.items()}
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=3000):
        answers = await asyncio.gather(*(wait_result(queue, t) for t in ids.values()))
    results = dict(zip(ids, answers, strict=True))

    poison = assert_error(results["poison"], "llm_crashed")
    assert answer(results["poison"]) == "p0 p1 "
    assert "exited with status 3" in str(poison["message"])
    assert str(poison["message"]).endswith("(after 2 tokens)")

    finished = assert_complete_answer(results["finished"], "short answer")
    assert finished.data is not None
    assert (finished.data["attempt"], finished.data["batch_size"]) == (1, 4)

    # tokens at 0, 110, 220 ms were written before the crash at 300 ms
    cut = assert_error(results["streaming"], "llm_crashed")
    delivered = [e.text for e in results["streaming"][:-1]]
    assert delivered == tokenize(streaming_body)[:3]
    assert str(cut["message"]).endswith("(after 3 tokens)")
    assert await attempt_of(redis, queue.keys.task(ids["streaming"])) == 1

    waited = assert_complete_answer(results["waiting"], "not started yet")
    assert waited.data is not None
    assert (waited.data["attempt"], waited.data["batch_size"]) == (2, 1)
