"""The whole system from a client's side: many concurrent streams, batching under a burst."""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.contexts import HOSTILE_TEXTS
from tests.support.processes import Stack, start_together
from tests.support.sse import RawResponse, generate, raw_get, words

pytestmark = pytest.mark.system

CLIENTS = 32


async def test_32_concurrent_clients_each_get_their_own_complete_answer(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api, *workers = await start_together(
        stack.api(), *(stack.worker(window_ms=200, max_batch=4) for _ in range(2))
    )
    await stack.wait_ready(api)
    bodies = [f"client {n} says {words(12, f'c{n}-w')}" for n in range(CLIENTS)]
    contexts = [f"@mock ttft_ms=300 itl_ms=20\n{body}" for body in bodies]

    answers = await asyncio.gather(*(generate(client, api.url, c) for c in contexts))

    dones = [a.assert_exact(body) for a, body in zip(answers, bodies, strict=True)]
    assert len({a.task_id for a in answers}) == CLIENTS
    sizes = Counter(d["batch_size"] for d in dones)
    assert max(sizes) <= 4, sizes
    assert sizes[4] >= 0.75 * CLIENTS, sizes
    batches = Counter(d["batch_id"] for d in dones)
    assert all(n <= 4 for n in batches.values()), batches
    assert {d["worker"] for d in dones} == {w.id for w in workers}  # the burst was shared
    assert all(d["attempt"] == 1 for d in dones)


async def test_hostile_contexts_are_echoed_exactly_and_run_nothing(
    stack: Stack, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # A 64 KiB echo is longer than the default LLMB_MAX_TOKENS.
    api, _ = await start_together(stack.api(), stack.worker(max_tokens=1_000_000))
    await stack.wait_ready(api)
    marker = tmp_path / "pwned"
    contexts = {name: text for name, text in HOSTILE_TEXTS.items() if text}
    contexts["subshell"] = f"$(touch {marker})"
    contexts["backticks"] = f"`touch {marker}`; touch {marker}"
    contexts["big"] = ('64 KiB: שלום 🙂 "q" \\ line\r\n' * 3000)[: 64 * 1024]

    names = list(contexts)
    answers = await asyncio.gather(
        *(generate(client, api.url, contexts[n], post=n in ("big", "sse")) for n in names)
    )

    for name, answer in zip(names, answers, strict=True):
        answer.assert_exact(contexts[name])
    assert not marker.exists()


def assert_answer_or_4xx(response: RawResponse, expected: str) -> None:
    """Either the exact echo of what the server decoded, or a clear 4xx."""
    if response.status == 200:
        response.stream().assert_exact(expected)
    else:
        assert 400 <= response.status < 500, (response.status, response.body[:200])


async def test_malformed_and_oversized_requests_get_an_answer_or_a_clear_4xx(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api, _ = await start_together(stack.api(), stack.worker())
    await stack.wait_ready(api)

    # invalid percent-encoding, truncated UTF-8, a NUL byte (sent as raw bytes), and 10,000
    # query parameters: each its answer or a 4xx
    expected = {
        f"/generate?context={raw.replace(' ', '%20')}".encode(): urllib.parse.unquote(
            raw, errors="replace"
        )
        for raw in ["%ZZ", "%FF", "a%00b", "%E2%82", "%", "100%25 sure%"]
    }
    params = b"&".join(b"p%d=%d" % (i, i) for i in range(10_000))
    expected[b"/generate?context=ten-thousand&" + params] = "ten-thousand"
    responses = await asyncio.gather(*(raw_get(api.url, target) for target in expected))
    for response, text in zip(responses, expected.values(), strict=True):
        assert_answer_or_4xx(response, text)

    # a context over the limit in the URL: 413 with a JSON detail
    too_big = await raw_get(api.url, b"/generate?context=" + b"a" * 200_000)
    assert too_big.status == 413
    assert too_big.json()["code"] == "context_too_large" and too_big.json()["detail"]

    # a URL longer than the server parses: a 4xx, not a reset connection
    overlong = await raw_get(api.url, b"/generate?context=" + b"b" * 1_000_000)
    assert 400 <= overlong.status < 500, overlong

    # a 1 MiB body, and a body within bounds whose context is over the limit
    url = f"{api.url}/generate"
    for body in ({"context": "c" * (1 << 20)}, {"context": "d" * 200_000}):
        response = await client.post(url, json=body)
        assert response.status_code == 413, response.text[:200]
        assert response.json()["code"] == "context_too_large" and response.json()["detail"]

    # bodies and parameters that are not a context at all
    for content in (
        b"not json",
        b'{"context": 5}',
        b'{"context": ""}',
        b'{"context": "x", "y": 1}',
    ):
        response = await client.post(
            url, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (content, response.text[:200])
        assert response.json()["detail"]
    for params in ({}, {"context": ""}):
        assert (await client.get(url, params=params)).status_code == 422
    bad_resume = await client.get(url, headers={"Last-Event-ID": "<script>:x"})
    assert bad_resume.status_code == 422
    unknown = await client.get(url, headers={"Last-Event-ID": f"{uuid.uuid4()}:3"})
    assert unknown.status_code == 404

    # after all of that the same API serves a normal request
    assert api.proc.popen.poll() is None
    (await generate(client, api.url, "still serving")).assert_exact("still serving")
