"""Scale-downs mid-batch: a worker stopped in order hands its running tasks back, and that attempt
does not count, so a task handed back more often than LLMB_MAX_ATTEMPTS still completes."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.support.processes import Stack
from tests.support.sse import Stream, after_tokens, read_sse, resume, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

MAX_ATTEMPTS = 2
HAND_BACKS = 3  # more than MAX_ATTEMPTS: had each counted, the task would be dead-lettered


async def test_a_task_handed_back_on_drain_more_than_max_attempts_times_completes(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api()
    body = words(40)
    context = "@mock ttft_ms=0 itl_ms=100\n" + body
    url = f"{api.url}/generate"
    watching = Stream()  # one client reads the whole time
    reader = asyncio.create_task(
        read_sse(client, "GET", url, into=watching, params={"context": context})
    )
    await eventually(lambda: bool(watching.events), 10, "the task to be queued")
    leaving = Stream()  # another reads the same task, hangs up, and resumes at the end
    headers = {"Last-Event-ID": f"{watching.task_id}:-1"}
    for round_ in range(1, HAND_BACKS + 1):
        worker = await stack.worker(max_attempts=MAX_ATTEMPTS, drain_s=0)
        seen = 3 * round_
        await eventually(lambda: len(watching.tokens) >= seen, 20, f"{seen} tokens")  # noqa: B023
        if round_ == 1:
            await read_sse(client, "GET", url, into=leaving, headers=headers, until=after_tokens(2))
        worker.proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.proc.wait, 20) == 0
        log = worker.proc.log()
        assert "drain time over: cancelling the running batch" in log
        assert "handed back 1 task(s) for other workers (1 attempt(s) refunded)" in log
    assert not reader.done()
    assert len(watching.tokens) < 40  # every worker was stopped mid-answer

    last = await stack.worker(max_attempts=MAX_ATTEMPTS)
    await asyncio.wait_for(reader, 30)
    done = watching.assert_exact(body)
    assert (done["attempt"], done["worker"]) == (HAND_BACKS + 1, last.id)
    assert leaving.connections == 1 and len(leaving.tokens) == 2
    await resume(client, api.url, leaving)
    leaving.assert_exact(body)
