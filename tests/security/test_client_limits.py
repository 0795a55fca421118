"""Limits on clients: open streams per client and per process, and half-open requests (issue:
one client could open any number of streams; 40 of 40 half-open requests were still open after
65 s, each able to buffer about 400 KB)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.processes import Stack
from tests.support.sse import Stream, after_task, read_sse, sse_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.system


@contextlib.asynccontextmanager
async def open_streams(
    client: httpx.AsyncClient, url: str, n: int, headers: dict[str, str] | None = None
) -> AsyncIterator[None]:
    """``n`` streams held open (each has received its `task` event) for the block."""
    held = []  # a dropped event iterator would close its response when collected
    async with contextlib.AsyncExitStack() as streams:
        for i in range(n):
            response = await streams.enter_async_context(
                client.stream("GET", url, params={"context": f"held {i}"}, headers=headers)
            )
            assert response.status_code == 200, await response.aread()
            events = sse_events(response)
            held.append(events)
            async with asyncio.timeout(10):
                await anext(events)  # the `task` event: the stream is open and counted
        yield


async def slots_given_back(client: httpx.AsyncClient, url: str) -> None:
    """Closed streams give their slots back (once the server has seen the hang-ups)."""

    async def accepted() -> bool:
        stream = await read_sse(client, "GET", url, params={"context": "again"}, until=after_task)
        return stream.status == 200

    await eventually(accepted, 10, "a stream to be accepted again")


def assert_refused(stream: Stream, status: int, code: str, retry_after: str) -> None:
    assert stream.status == status, stream.kinds
    assert stream.body["code"] == code
    assert stream.headers["retry-after"] == retry_after


async def test_one_client_cannot_hold_more_than_its_streams(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    # No worker: every stream stays open, waiting for its answer.
    api = await stack.api(max_streams_per_client=2, stream_limit_exempt="")
    url = f"{api.url}/generate"
    async with open_streams(client, url, 2):
        # The attacker's third stream from the same address is refused, and so is a fourth with
        # a made-up Bearer token (without API keys a token names nobody).
        third = await read_sse(client, "GET", url, params={"context": "one too many"})
        assert_refused(third, 429, "too_many_streams", "2")
        made_up = {"Authorization": "Bearer made-up-token"}
        fourth = await read_sse(client, "GET", url, params={"context": "x"}, headers=made_up)
        assert_refused(fourth, 429, "too_many_streams", "2")
    await slots_given_back(client, url)


async def test_openai_streams_count_toward_the_same_limit(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api(max_streams_per_client=2, stream_limit_exempt="")
    chat = {
        "model": "llm-batcher-mock",
        "messages": [{"role": "user", "content": "waiting"}],
        "stream": True,
    }
    async with (
        open_streams(client, f"{api.url}/generate", 1),
        client.stream("POST", f"{api.url}/v1/chat/completions", json=chat) as held,
    ):
        assert held.status_code == 200
        chunks = held.aiter_raw()
        assert (await anext(chunks)).startswith(b"data: ")  # open and counted (read timeout: 30 s)
        # two streams open (one of each kind): a third, of either kind, is refused
        refused = await client.post(f"{api.url}/v1/chat/completions", json=chat)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["retry-after"] == "2"
        third = await read_sse(client, "GET", f"{api.url}/generate", params={"context": "x"})
        assert_refused(third, 429, "too_many_streams", "2")
    await slots_given_back(client, f"{api.url}/generate")


async def test_with_api_keys_each_key_has_its_own_streams(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api(
        max_streams_per_client=2, stream_limit_exempt="", api_keys="alice-key,bob-key"
    )
    url = f"{api.url}/generate"
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    async with open_streams(client, url, 2, headers=alice):
        refused = await read_sse(client, "GET", url, params={"context": "x"}, headers=alice)
        assert_refused(refused, 429, "too_many_streams", "2")
        # Another key from the same address is another client.
        async with open_streams(client, url, 2, headers=bob):
            pass


async def test_the_process_limit_holds_for_every_client(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api(max_streams=3)  # loopback is exempt from the per-client limit only
    url = f"{api.url}/generate"
    async with open_streams(client, url, 3):
        refused = await read_sse(client, "GET", url, params={"context": "busy"})
        assert_refused(refused, 503, "server_busy", "2")
    await slots_given_back(client, url)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    async with asyncio.timeout(timeout_s):
        return await reader.read()


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"GET /generate?context=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",  # half the headers
    ],
)
async def test_a_half_open_request_is_closed(stack: Stack, sent: bytes) -> None:
    api = await stack.api(request_read_timeout_s=1)
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(sent)
        await writer.drain()
        answer = await read_until_closed(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"x-content-type-options: nosniff" in answer


async def test_a_body_that_never_arrives_is_closed(stack: Stack) -> None:
    api = await stack.api(request_read_timeout_s=1)
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"context": "' + b"x" * 1000
        )
        await writer.drain()
        answer = await read_until_closed(reader)
    finally:
        writer.close()
    assert b" 200 " not in answer.split(b"\r\n", 1)[0]  # closed without a stream
    # The server still serves others, and took the cut as a matter of course.
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(f"{api.url}/healthz")).status_code == 200
    await eventually(lambda: "before its body arrived" in api.proc.log(), 10, "the cut logged")
    assert "Traceback" not in api.proc.log()
