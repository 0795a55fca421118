"""LLM failures (exit, hang, garbage) become the right error codes, and a poison context fails
alone while its batch-mates complete (the rules in worker/batch.py's docstring)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.keys import token_entry_id
from llm_batcher.protocol.results import ResultEntry
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


async def test_a_poison_mid_stream_spares_finished_streaming_and_waiting_mates(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Poison crashes at 300 ms after 2 tokens. A mate that finished before survives as done, a
    mate cut mid-stream and a mate with no token yet are each retried alone and complete: the
    one cut mid-stream resumes after the tokens it had, without a duplicate or a gap."""
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
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=3000) as (worker, _):
        answers = await asyncio.gather(*(wait_result(queue, t) for t in ids.values()))
    results = dict(zip(ids, answers, strict=True))

    poison = assert_error(results["poison"], "llm_crashed")
    assert answer(results["poison"]) == "p0 p1 "
    assert "exited with status 3" in str(poison["message"])
    assert str(poison["message"]).endswith("(after 2 tokens)")
    assert "-solo-" in str(poison["message"])  # the error comes from its run alone

    finished = assert_complete_answer(results["finished"], "short answer")
    assert finished.data is not None
    assert (finished.data["attempt"], finished.data["batch_size"]) == (1, 4)

    # tokens at 0, 110, 220 ms were written before the crash at 300 ms; the worker says so
    assert "retrying 3 task(s) each alone (2 cut mid-stream)" in worker.log()
    for name, body in (("streaming", streaming_body), ("waiting", "not started yet")):
        done = assert_complete_answer(results[name], body)
        assert done.data is not None
        assert (done.data["attempt"], done.data["batch_size"]) == (2, 1), name


MATE_BODIES = [
    "mate one alpha beta gamma",
    "mate two delta epsilon zeta",
    "mate three eta theta iota",
]
POISON_BODY = "poison kappa lambda mu nu"
TIMING = "@mock ttft_ms=100 itl_ms=100"


async def run_poisoned_batch(
    redis: Redis,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    fail: str,
    mate_limits: Sequence[dict[str, Any]] = ({}, {}, {}),
    **settings: object,
) -> tuple[list[str], list[list[ResultEntry]], str]:
    """One batch of four: a poison that fails after 2 tokens (at 300 ms), submitted first, and
    three mates with the same timing (and ``mate_limits``: max_tokens, stop), each cut after 2
    tokens (the poison's failure comes before their third, at the same time); the task ids,
    their results and the worker log."""
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    ids = [await submit(queue, f"{TIMING} fail={fail} fail_after=2\n{POISON_BODY}")]
    for body, limits in zip(MATE_BODIES, mate_limits, strict=True):
        ids.append(await submit(queue, f"{TIMING}\n{body}", **limits))
    worker_ctx = running_worker(redis_url, key_prefix, tmp_path, window_ms=3000, **settings)
    async with worker_ctx as (worker, _):
        results = await asyncio.gather(*(wait_result(queue, t, timeout_s=30) for t in ids))
        return ids, list(results), worker.log()


@pytest.mark.parametrize(
    ("fail", "code", "settings"),
    [
        ("exit", "llm_crashed", {}),
        ("hang", "llm_timeout", {"batch_timeout_s": 2}),
        ("garbage", "llm_bad_output", {}),
    ],
)
async def test_one_poison_mid_stream_fails_alone_and_its_cut_mates_resume(
    redis: Redis,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    fail: str,
    code: str,
    settings: dict[str, object],
) -> None:
    _, results, log = await run_poisoned_batch(
        redis, redis_url, key_prefix, tmp_path, fail, **settings
    )
    # the batch failed with all four streaming: each was retried alone
    assert "retrying 4 task(s) each alone (4 cut mid-stream)" in log
    for entries, body in zip(results[1:], MATE_BODIES, strict=True):
        done = assert_complete_answer(entries, body)  # exact answer, token ids without gap
        assert done.data is not None
        assert (done.data["attempt"], done.data["batch_size"]) == (2, 1)
        assert done.data["tokens"] == len(tokenize(body))
    poison = results[0]
    error = assert_error(poison, code)
    # the tokens of its first run: its solo run wrote them again, and APPEND skipped them
    assert [e.entry_id for e in poison[:-1]] == [token_entry_id(0), token_entry_id(1)]
    assert answer(poison) == "poison kappa "
    assert str(error["message"]).endswith("(after 2 tokens)")
    assert "-solo-" in str(error["message"])


async def test_a_resumed_mate_keeps_its_max_tokens_and_stop_sequences(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """A mate's solo run counts its cap and scans for its stop sequences from the first token
    again, so it ends where it would have: no token past the cap, none re-emitted."""
    limits = [{"max_tokens": 4}, {"stop": ["epsilon"]}, {"max_tokens": 3, "stop": ["theta"]}]
    _, results, log = await run_poisoned_batch(
        redis, redis_url, key_prefix, tmp_path, "exit", limits
    )
    assert "retrying 4 task(s) each alone (4 cut mid-stream)" in log
    expected = [("mate one alpha beta ", "length"), ("mate two delta ", "stop")]
    expected.append(("mate three eta ", "length"))
    for entries, (text, reason) in zip(results[1:], expected, strict=True):
        done = assert_complete_answer(entries, text)
        assert done.data is not None
        assert done.data["attempt"] == 2
        assert (done.data["tokens"], done.data["finish_reason"]) == (len(tokenize(text)), reason)
    assert_error(results[0], "llm_crashed")


async def test_solo_retries_are_bounded_by_max_attempts(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """At its last attempt a task is not retried: the batch's failure is its error, cut where
    it was, and no solo run starts."""
    queue = make_queue(redis, key_prefix)
    ids, results, log = await run_poisoned_batch(
        redis, redis_url, key_prefix, tmp_path, "exit", max_attempts=1
    )
    assert "each alone" not in log
    assert "-solo-" not in log
    bodies = [POISON_BODY, *MATE_BODIES]
    for task_id, entries, body in zip(ids, results, bodies, strict=True):
        error = assert_error(entries, "llm_crashed")
        assert answer(entries) == "".join(tokenize(body)[:2])
        assert str(error["message"]).endswith("(after 2 tokens)")
        assert await attempt_of(redis, queue.keys.task(task_id)) == 1
