"""Clients of the API through the port-forward: the project's SSE reader (tests.support.sse)
and stream contract, with the resume an EventSource does when a pod closes its stream."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from tests.support.sse import Stream, read_sse, words

from llm_batcher.check import mock_answer

STREAM_TIMEOUT_S = 240.0
"""One connection's bound: long enough for KEDA to wake a worker from zero (poll, scrape, pod
start) and for the chart's mock to answer (200-600 ms to the first token, 20-60 ms a token)."""
MAX_CONNECTIONS = 5
"""A stream that needs more connections than this fails: resumes are bounded too."""


def contexts(count: int, tokens: int, tag: str) -> list[str]:
    """``count`` distinct contexts the mock answers with ``tokens`` tokens each (its echo)."""
    return [words(tokens, f"{tag}{i}-") for i in range(count)]


async def answer(
    client: httpx.AsyncClient, base_url: str, context: str, stream: Stream | None = None
) -> Stream:
    """Submit ``context`` and read its answer to the end, resuming with Last-Event-ID whenever
    a connection ends without a terminal event (its pod left). ``stream`` lets the caller
    watch the events as they come."""
    url = f"{base_url}/generate"
    stream = stream if stream is not None else Stream()
    while not stream.ended:
        assert stream.connections < MAX_CONNECTIONS, f"resumed {stream.connections - 1} times"
        first = not stream.events
        kwargs: dict[str, Any] = (
            {"json": {"context": context}}
            if first
            else {"headers": {"Last-Event-ID": stream.last_id}}
        )
        try:
            await read_sse(
                client, "POST" if first else "GET", url, into=stream,
                timeout_s=STREAM_TIMEOUT_S, **kwargs,
            )  # fmt: skip
        except httpx.TransportError:
            continue  # its pod left mid-stream: the next connection goes to another pod
        if stream.status != 200:
            break
    return stream


async def answers(client: httpx.AsyncClient, base_url: str, texts: list[str]) -> list[Stream]:
    """All of ``texts`` at once, one client each."""
    return list(await asyncio.gather(*(answer(client, base_url, t) for t in texts)))


def assert_mock_answer(stream: Stream, context: str) -> dict[str, Any]:
    """The mock's exact answer, each token once and in order over every connection; the `done`
    event's data."""
    return stream.assert_exact(mock_answer(context))
