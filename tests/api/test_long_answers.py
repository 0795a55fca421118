"""A long answer is read from Redis in pages (a resume used to read it in one XRANGE): resuming
it from the start, across a page boundary or near its end gives every token once and in order."""

from __future__ import annotations

import httpx
import pytest

from llm_batcher.protocol.results import RESULT_PAGE_ENTRIES
from tests.support.processes import Stack
from tests.support.sse import read_sse

pytestmark = pytest.mark.system

TOKENS = RESULT_PAGE_ENTRIES * 2 + 500
CONTEXT = f"@mock ttft_ms=0 itl_ms=0 extra_tokens={TOKENS - 1}\nlong"


async def test_resuming_a_long_answer_reads_it_page_by_page(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api()
    await stack.worker()
    first = await read_sse(client, "POST", f"{api.url}/generate", json={"context": CONTEXT})
    assert first.terminal.kind == "done" and len(first.tokens) == TOKENS
    url = f"{api.url}/generate"
    for after in (-1, RESULT_PAGE_ENTRIES - 1, TOKENS - 2):
        replay = await read_sse(
            client, "GET", url, headers={"Last-Event-ID": f"{first.task_id}:{after}"}
        )
        assert replay.status == 200, replay.body
        assert [e.id for e in replay.tokens] == [
            f"{first.task_id}:{i}" for i in range(after + 1, TOKENS)
        ]
        assert replay.text == "".join(t.data["text"] for t in first.tokens[after + 1 :])
        assert replay.terminal.data["tokens"] == TOKENS
