"""Tokens reach Redis while the batch runs, in order, and soon after the LLM writes them."""

from __future__ import annotations

import asyncio
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.keys import token_entry_id
from llm_batcher.protocol.results import ResultEntry
from tests.support.processes import running_worker
from tests.support.results import assert_complete_answer, make_queue, submit, wait_result
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

SLOW_BODY = "one two three four five six"

# An LLM that writes one token, then waits until the test has seen it in Redis and opened that
# token's gate before it writes the next (bounded: past 30 s it exits, failing the batch).
GATED_LLM = """
import json, sys, time
import redis
gates = redis.Redis.from_url({redis_url!r})
for index, token in enumerate({tokens!r}):
    sys.stdout.write(json.dumps({{"index": 0, "token": token}}) + "\\n")
    sys.stdout.flush()
    for _ in range(3000):
        if gates.exists(f"{gate}:{{index}}"):
            break
        time.sleep(0.01)
    else:
        sys.exit(3)
sys.stdout.write(json.dumps({{"index": 0, "finish": "stop"}}) + "\\n")
"""


async def test_each_token_is_in_redis_before_the_llm_writes_the_next(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Each token is relayed on its own while the batch runs, not held back: the LLM writes a
    token only after the test saw the one before in Redis. Order, not time: no clock is read."""
    tokens = tokenize(SLOW_BODY)
    gate = f"{key_prefix}:test-gate"
    script = tmp_path / "gated_llm.py"
    script.write_text(GATED_LLM.format(redis_url=redis_url, tokens=tokens, gate=gate))
    command = shlex.join([sys.executable, str(script)])
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, llm_command=command, window_ms=0):
        task_id = await submit(queue, "gated")
        for index, token in enumerate(tokens):

            async def relayed(index: int = index) -> bool:
                return bool(await queue.results.after(task_id, index - 1))

            await eventually(relayed, 30, f"token {index} in Redis")
            # the LLM waits at this token's gate: exactly this token is new, and nothing ends
            new = await queue.results.after(task_id, index - 1)
            assert [(e.entry_id, e.text) for e in new] == [(token_entry_id(index), token)]
            assert await redis.hget(queue.keys.task(task_id), "state") == b"running"
            await redis.set(f"{gate}:{index}", 1)
        entries = await wait_result(queue, task_id)
    assert_complete_answer(entries, SLOW_BODY)


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
