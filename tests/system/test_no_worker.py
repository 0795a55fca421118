"""With no worker alive the API stays ready and queues requests; a worker started later answers
them (scale to zero: the queue must grow for the autoscaler to start a worker)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.metrics import exports
from tests.support.processes import Stack
from tests.support.sse import read_sse, with_context, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_request_queued_with_no_worker_completes_once_one_starts(
    stack: Stack, client: httpx.AsyncClient, method: str
) -> None:
    api = await stack.api(lease_ms=1500)
    ready = await client.get(f"{api.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["no_live_worker"] is True
    body = words(8)
    context = "@mock ttft_ms=0 itl_ms=20\n" + body
    url = f"{api.url}/generate"
    waiting = asyncio.create_task(read_sse(client, method, url, **with_context(method, context)))

    await eventually(
        lambda: exports(
            f"{api.url}/metrics", llm_batcher_queue_depth=1, llm_batcher_workers_live=0
        ),
        10,
        "the API to export 1 queued task and no live worker",
    )
    assert not waiting.done()  # admitted, and waiting: no refusal, no error

    await stack.worker()
    stream = await asyncio.wait_for(waiting, 20)
    done = stream.assert_exact(body)
    assert done["attempt"] == 1
    answer = (await client.get(f"{api.url}/readyz")).json()
    assert answer["workers"] == 1 and answer["no_live_worker"] is False
