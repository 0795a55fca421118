"""What one request may cost: `@mock` directives only when the worker allows them, and no answer
longer than LLMB_MAX_TOKENS, whatever the model writes; its batch-mates run on undisturbed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.keys import Keys
from tests.support.processes import running_worker
from tests.support.results import (
    assert_complete_answer,
    make_queue,
    queue_length,
    submit,
    wait_result,
)
from tests.support.sse import words

pytestmark = pytest.mark.system

FLOOD = "@mock ttft_ms=0 itl_ms=0 extra_tokens=100000\nfifty bytes, a hundred thousand tokens"


async def test_with_directives_off_a_mock_line_is_text_and_sets_no_cost(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """The attack: `extra_tokens=100000` wrote 100,002 stream entries from a 50-byte request,
    and `fail=hang` held a worker for the whole batch timeout. Off, both are echoed text."""
    queue = make_queue(redis, key_prefix)
    async with running_worker(
        redis_url, key_prefix, tmp_path, mock_directives="false", batch_timeout_s=60
    ):
        flood = await submit(queue, FLOOD)
        assert_complete_answer(await wait_result(queue, flood), FLOOD)
        hang = await submit(queue, "@mock fail=hang\nhangs no more")
        assert_complete_answer(
            await wait_result(queue, hang, timeout_s=20), "@mock fail=hang\nhangs no more"
        )
    assert await redis.xlen(Keys(key_prefix).result(flood)) == len(tokenize(FLOOD)) + 1


async def test_with_directives_on_the_token_cap_still_bounds_the_answer(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, max_tokens=300):
        flood = await submit(queue, FLOOD)
        entries = await wait_result(queue, flood)
    done = entries[-1]
    assert done.kind == "done" and done.data is not None
    assert done.data["tokens"] == 300 and done.data["finish_reason"] == "length"
    assert len(entries) == 301  # 300 tokens and the done: nothing else was written
    assert done.data["text"] == "".join(e.text for e in entries[:-1])


async def test_a_capped_task_ends_at_once_and_its_batch_mate_runs_on(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    mate_body = words(20)
    async with running_worker(
        redis_url, key_prefix, tmp_path, max_tokens=50, max_batch=2, window_ms=2000
    ):
        flood, mate = await asyncio.gather(
            submit(queue, FLOOD), submit(queue, "@mock ttft_ms=0 itl_ms=100\n" + mate_body)
        )
        capped = await wait_result(queue, flood)
        # The capped task's slot is free while its batch-mate still streams.
        mate_state = await redis.hget(Keys(key_prefix).task(mate), "state")
        in_flight = await queue_length(redis, key_prefix)
        mate_done = assert_complete_answer(await wait_result(queue, mate), mate_body)
    assert capped[-1].data is not None and capped[-1].data["finish_reason"] == "length"
    assert capped[-1].data["tokens"] == 50 and capped[-1].data["batch_size"] == 2
    assert (mate_state, in_flight) == (b"running", 1)
    assert mate_done.data is not None
    assert mate_done.data["finish_reason"] == "stop" and mate_done.data["batch_size"] == 2
    assert mate_done.data["batch_id"] == capped[-1].data["batch_id"]
