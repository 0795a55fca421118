"""Dead letters seen by an operator (`llm-batcher dlq`) and by the client: a task the LLM fails is
listed and shown; once the model is fixed, a requeue runs it again under its id and the client
reads the new answer by resuming; a purge deletes what is left."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.support.processes import Stack
from tests.support.sse import Stream, read_sse, words
from tests.test_dlq import run_dlq

pytestmark = pytest.mark.system

POISON = "@mock ttft_ms=0 itl_ms=20 fail=exit fail_after=2\n" + words(5, "p")
"""Crashes the mock after two tokens, while the mock honours directives; echoed whole when not."""


async def dlq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `llm-batcher dlq ARGS` on the test's Redis and prefix."""
    return await run_dlq(stack.redis_url, stack.prefix, *args)


async def dlq_json(stack: Stack, *args: str) -> Any:
    result = await dlq(stack, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_a_dead_letter_is_listed_requeued_after_a_fix_resumed_and_purged(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api, broken = await asyncio.gather(stack.api(), stack.worker(max_attempts=2))
    url = f"{api.url}/generate"
    first, doomed = await asyncio.gather(
        *(read_sse(client, "POST", url, json={"context": POISON + tag}) for tag in ("", " x"))
    )
    for stream in (first, doomed):
        assert stream.assert_error()["code"] == "llm_crashed"
    assert len(first.tokens) == 2  # what the client saw before the crash

    listed = await dlq_json(stack, "list")
    assert {d["task_id"] for d in listed} == {first.task_id, doomed.task_id}
    table = await dlq(stack, "list")
    assert first.task_id in table.stdout and "2 dead letter(s)" in table.stdout
    shown = await dlq_json(stack, "show", first.task_id)
    assert shown["code"] == "llm_crashed" and shown["message"] == first.terminal.data["message"]
    assert 1 <= shown["attempts"] <= 2  # alone, or a batch and then a retry alone
    assert shown["tokens"] == 2 and shown["context_bytes"] == len(POISON)
    assert shown["context_preview"].startswith("@mock ttft_ms=0")

    # The operator fixes the model (here: a mock that ignores directives, so echoes the poison
    # whole) and requeues the task.
    broken.proc.stop()
    requeued = await dlq(stack, "requeue", first.task_id)
    assert requeued.returncode == 0, requeued.stderr
    assert f"Last-Event-ID: {first.task_id}:-1" in requeued.stdout
    assert f"dead letter {first.task_id} requeued" in requeued.stderr  # the action's log line
    assert (await dlq(stack, "show", first.task_id)).returncode == 1  # no longer a dead letter

    # The client resumes from the start: no trace of the failed run, then the new run's answer.
    again = Stream()
    resumed = asyncio.create_task(
        read_sse(client, "GET", url, into=again, headers={"Last-Event-ID": f"{first.task_id}:-1"})
    )
    await stack.worker(mock_directives="off")
    await resumed
    done = again.assert_exact(POISON)
    assert done["task_id"] == first.task_id and done["attempt"] == 1  # a fresh attempt count

    assert [d["task_id"] for d in await dlq_json(stack, "list")] == [doomed.task_id]
    assert await dlq_json(stack, "purge") == {"purged": 1}
    assert await dlq_json(stack, "list") == []
    gone = await read_sse(client, "GET", url, headers={"Last-Event-ID": f"{doomed.task_id}:-1"})
    assert gone.status == 404 and gone.body["code"] == "unknown_task"
