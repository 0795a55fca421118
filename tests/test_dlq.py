"""`llm-batcher dlq` on Redis, as an operator runs it: requeue --all, a full queue, the tables."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess

from redis.asyncio import Redis

from llm_batcher.dlq import format_one, format_requeued, format_table
from llm_batcher.protocol.dead_letters import DeadLetter, Requeued
from llm_batcher.protocol.outcomes import RequeueOutcome
from tests.support.processes import BIN, base_env
from tests.support.results import dead_letter, make_queue

LETTER = DeadLetter(
    task_id="0b6c1f9e-8d4b-4c1e-9f0a-3e2d1c0b9a87",
    dead_ms=1_700_000_000_000,
    code="llm_crashed",
    message="the LLM exited with status 3; see the worker log of batch b1 (after 2 tokens)",
    attempts=2,
    handed_back=0,
    worker="w1",
    tokens=2,
    preview='a "quoted"\ncontext',
    context_bytes=19,
    created_ms=1_699_999_999_000,
    owner="",
    requeues=0,
)


async def run_dlq(
    redis_url: str, prefix: str, *args: str, **settings: object
) -> subprocess.CompletedProcess[str]:
    env = base_env(redis_url, prefix, log_level="INFO", **settings)
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "llm-batcher"), "dlq", *args, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def test_requeue_all_queues_every_dead_letter_and_logs_each(
    redis: Redis, redis_url: str, key_prefix: str
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    ids = [await dead_letter(queue, f"poison {i}") for i in range(2)]
    result = await run_dlq(redis_url, key_prefix, "requeue", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(r["task_id"] for r in json.loads(result.stdout)) == sorted(ids)
    assert {r["outcome"] for r in json.loads(result.stdout)} == {"ok"}
    for task_id in ids:
        assert f"dead letter {task_id} requeued" in result.stderr
    assert await redis.xlen(queue.keys.tasks) == 2
    again = await run_dlq(redis_url, key_prefix, "requeue", "--all")
    assert (again.returncode, again.stdout.strip()) == (0, "requeued 0 of 0 dead letter(s)")


async def test_a_requeue_into_a_full_queue_fails_and_keeps_the_dead_letter(
    redis: Redis, redis_url: str, key_prefix: str
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    task_id = await dead_letter(queue, "poison")
    await queue.tasks.submit("9f1e2d3c-0000-4000-8000-000000000001", "busy", now_ms=0,
                             deadline_ms=2**40, max_queue=10)  # fmt: skip
    result = await run_dlq(redis_url, key_prefix, "requeue", task_id, max_queue=1)
    assert result.returncode == 1
    assert "the queue is full" in result.stdout and "not requeued: queue_full" in result.stderr
    assert [d.task_id for d in await queue.dead_letters.entries()] == [task_id]
    unknown = await run_dlq(redis_url, key_prefix, "show", "no-such-task")
    assert unknown.returncode == 1 and "is not a dead letter" in unknown.stderr


def test_the_tables_show_error_attempts_and_a_one_line_preview() -> None:
    table = format_table([LETTER]).splitlines()
    assert table[0].split() == ["task", "dead", "at", "error", "attempts", "tokens", "context"]
    assert table[1].split()[:5] == [LETTER.task_id, "2023-11-14T22:13:20Z", "llm_crashed", "2", "2"]
    assert table[1].endswith('"a \\"quoted\\"\\ncontext"')  # one line, whatever the context
    assert table[2] == "1 dead letter(s)"
    assert format_table([]) == "no dead letters"
    shown = format_one(LETTER)
    assert "message:         the LLM exited with status 3" in shown
    assert "attempts:        2\n" in shown and "context:         19 bytes" in shown
    handed = format_one(dataclasses.replace(LETTER, handed_back=1))
    assert "attempts:        2 (and 1 handed back by workers that stopped, not counted)" in handed
    requeued = format_requeued([Requeued(LETTER.task_id, RequeueOutcome.OK, 1)])
    assert f"Last-Event-ID: {LETTER.task_id}:-1" in requeued
