"""The mock's timing and length directives, seen through a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.mock.tokens import FILLER_WORDS, tokenize
from tests.support.processes import running_worker
from tests.support.results import (
    assert_complete_answer,
    make_queue,
    submit,
    wait_result,
)

pytestmark = pytest.mark.system

SLOW_TTFT_MS = 2000


async def test_ttft_ms_delays_the_first_token(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        slow = await submit(queue, f"@mock ttft_ms={SLOW_TTFT_MS} itl_ms=0\nwaited for")
        slow_done = assert_complete_answer(await wait_result(queue, slow), "waited for")
        quick = await submit(queue, "@mock ttft_ms=0 itl_ms=0\nat once")
        quick_done = assert_complete_answer(await wait_result(queue, quick), "at once")
    assert slow_done.data is not None and quick_done.data is not None
    assert slow_done.data["ttft_ms"] >= SLOW_TTFT_MS  # a lower bound: load only delays
    # Same worker, same queue: the difference is the directive. The quick one has no wait of
    # its own; only a machine delaying it by more than a second would break this.
    assert quick_done.data["ttft_ms"] < SLOW_TTFT_MS - 1000


async def test_itl_ms_spaces_the_tokens(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    itl_ms, body = 250, "a b c d e"
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms={itl_ms}\n{body}")
        entries = await wait_result(queue, task_id)
    done = assert_complete_answer(entries, body)
    assert done.data is not None
    # The mock writes token k no sooner than k * itl_ms after it starts, which is after the
    # task arrived: a lower bound on the time to the last token, which load cannot break.
    # (The times at which the test or the worker read the tokens could: a late read of the
    # first one shortens the span between first and last.)
    assert done.data["total_ms"] >= 4 * itl_ms


async def test_extra_tokens_follow_the_echo(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    body, extra = "echo me please", 7
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=0 extra_tokens={extra}\n{body}")
        again_id = await submit(queue, f"@mock ttft_ms=0 itl_ms=0 extra_tokens={extra}\n{body}")
        entries = await wait_result(queue, task_id)
        again = await wait_result(queue, again_id)
    tokens = [e.text for e in entries if e.kind == "token"]
    echo = tokenize(body)
    assert tokens[: len(echo)] == echo
    assert len(tokens) == len(echo) + extra
    assert all(t in FILLER_WORDS for t in tokens[len(echo) :])
    done = assert_complete_answer(entries, "".join(tokens))
    assert done.data is not None
    assert done.data["tokens"] == len(echo) + extra
    assert "".join(tokens).startswith(body)
    # filler depends on the context alone, so a retried context gets the same answer
    assert [e.text for e in again if e.kind == "token"] == tokens
