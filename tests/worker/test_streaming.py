"""Tokens reach Redis while the batch runs, in order, and soon after the LLM writes them."""

from __future__ import annotations

import asyncio
import itertools
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, token_entry_id
from llm_batcher.protocol.results import ResultEntry
from tests.support.processes import running_worker
from tests.support.results import assert_complete_answer, make_queue, read_as_they_come, submit
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

ITL_MS = 400
SLOW_BODY = "one two three four five six"


async def test_first_token_is_in_redis_while_the_batch_still_runs(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        task_id = await submit(queue, f"@mock ttft_ms=0 itl_ms={ITL_MS}\n{SLOW_BODY}")
        reader = asyncio.create_task(read_as_they_come(queue, task_id))
        result_key = queue.keys.result(task_id)
        await eventually(lambda: redis.exists(result_key), 10, "the first token")
        # the first token is visible, the answer is not finished
        first = await redis.xrange(result_key, "-", "+")
        assert first[0][0] == token_entry_id(0).encode()
        assert first[0][1][b"text"] == b"one "
        assert await redis.xrange(result_key, TERMINAL_ENTRY_ID, TERMINAL_ENTRY_ID) == []
        assert await redis.hget(queue.keys.task(task_id), "state") == b"running"
        arrivals = await reader

    entries = [a.entry for a in arrivals]
    assert_complete_answer(entries, SLOW_BODY)
    assert [e.entry_id for e in entries[:-1]] == [token_entry_id(i) for i in range(6)]
    # each token was relayed on its own, about ITL_MS after the previous one, not at the end
    token_times = [a.at_s for a in arrivals if a.entry.kind == "token"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(token_times)]
    assert min(gaps) > ITL_MS / 1000 / 4, gaps
    assert token_times[-1] - token_times[0] > 5 * ITL_MS / 1000 * 0.8


# An LLM whose tokens carry the wall-clock time at which they were written (ns).
RELAY_LLM = """
import base64, json, sys, time
contexts = [base64.b64decode(open(p, "rb").read()).decode() for p in sys.argv[1:]]
for _ in range({count}):
    for index in range(len(contexts)):
        sys.stdout.write(json.dumps({{"index": index, "token": f"{{time.time_ns()}} "}}) + "\\n")
        sys.stdout.flush()
    time.sleep({gap_s})
for index in range(len(contexts)):
    sys.stdout.write(json.dumps({{"index": index, "finish": "stop"}}) + "\\n")
"""
RELAY_TOKENS = 200


async def test_relay_delay_from_child_stdout_to_redis(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "stamping_llm.py"
    script.write_text(RELAY_LLM.format(count=RELAY_TOKENS, gap_s=0.004))
    command = shlex.join([sys.executable, str(script)])
    queue = make_queue(redis, key_prefix)
    pubsub = redis.pubsub()
    received: list[tuple[int, ResultEntry]] = []
    async with running_worker(redis_url, key_prefix, tmp_path, llm_command=command, window_ms=0):
        task_id = str(uuid.uuid4())
        await pubsub.subscribe(queue.keys.result(task_id))
        try:
            now = now_ms()
            assert await queue.tasks.submit(
                task_id, "stamps", now_ms=now, deadline_ms=now + 60_000, max_queue=100
            )
            async with asyncio.timeout(30):  # read every message as soon as it arrives
                while not (received and received[-1][1].is_terminal):
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if msg is not None:
                        at = time.time_ns()
                        received += [(at, e) for e in ResultEntry.from_announcement(msg["data"])]
        finally:
            await pubsub.aclose()

    tokens = [(at, entry) for at, entry in received if entry.kind == "token"]
    assert [e.entry_id for _, e in tokens] == [token_entry_id(i) for i in range(RELAY_TOKENS)]
    stamps = [int(e.text) for _, e in tokens]
    assert stamps == sorted(stamps)  # in the order written
    delays_ms = sorted((at - int(e.text)) / 1e6 for at, e in tokens)
    assert delays_ms[0] >= 0
    p50 = statistics.median(delays_ms)
    p99 = delays_ms[int(len(delays_ms) * 0.99) - 1]
    print(
        f"\nMEASURED relay_delay_ms p50={p50:.2f} p99={p99:.2f} max={delays_ms[-1]:.2f} "
        f"(child stdout -> Redis pub/sub -> test, {len(delays_ms)} tokens)"
    )
    done = received[-1][1]
    assert done.kind == "done"
    assert done.data is not None
    assert done.data["tokens"] == RELAY_TOKENS
    assert done.data["text"] == "".join(e.text for _, e in tokens)
