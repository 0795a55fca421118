"""A client that stops reading a long answer: once the socket buffers are full the API's send
waits, and after LLMB_SEND_TIMEOUT_S the API closes that stream, while it serves everyone else;
nothing of the stream is left open."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import quote, urlparse

import httpx
import psutil
import pytest

from tests.support.metrics import exports
from tests.support.processes import Api, Stack, start_together
from tests.support.sse import generate, words
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

TOKENS = 100_000  # about 8 MB of events: more than the socket buffers on both sides hold
SEND_TIMEOUT_S = 5  # long enough for another client to be served while the stream waits
CUT_OFF = f"took no data for {SEND_TIMEOUT_S} s"


@contextlib.asynccontextmanager
async def never_reading(api: Api, context: str) -> AsyncIterator[socket.socket]:
    """A connection that sends a /generate request and then reads nothing, with a small
    receive buffer so that the API's sends soon have nowhere to go."""
    url = urlparse(api.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (url.hostname, url.port))
        target = f"/generate?context={quote(context)}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        yield sock
    finally:
        sock.close()


def read_buffered(sock: socket.socket) -> bytes:
    """What the connection holds for the client, once the server's side of it is gone: on
    loopback the kernel hands data over as it is sent, so nothing more can come. Read without
    waiting, up to the end or the reset the server made of it, or to an empty buffer (the
    server's reset is not always taken: a client whose window is closed may answer it with a
    challenge ACK instead, RFC 5961, and then sees neither end nor reset)."""
    chunks = []
    with contextlib.suppress(BlockingIOError, ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def connections_from(api: Api, port: int) -> list[object]:
    """The API's TCP connections to a client port of this machine."""
    connections = psutil.Process(api.proc.pid).net_connections(kind="tcp")
    return [c for c in connections if c.raddr and c.raddr.port == port]


async def test_a_client_that_reads_nothing_is_cut_off_and_others_are_served(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api, _ = await start_together(
        stack.api(send_timeout_s=SEND_TIMEOUT_S), stack.worker(max_tokens=TOKENS + 1)
    )
    await stack.wait_ready(api)
    metrics_url = f"{api.url}/metrics"
    context = f"@mock ttft_ms=0 itl_ms=0 extra_tokens={TOKENS - 1}\nslow"
    async with never_reading(api, context) as sock:
        await eventually(
            lambda: exports(metrics_url, llm_batcher_open_streams=1), 10, "the stream to open"
        )
        # Meanwhile, everyone else is served.
        context = words(20)
        other = await generate(client, api.url, context)
        other.assert_exact(context)
        assert (await client.get(f"{api.url}/healthz")).status_code == 200

        # The API gives up on the reader, and keeps nothing of it: neither the stream nor the
        # connection, although the client neither reads nor hangs up.
        await eventually(lambda: CUT_OFF in api.proc.log(), 60, "the send timeout")
        log = api.proc.log()
        served = log.index(f"task {other.task_id} ended: done")
        assert served < log.index(CUT_OFF), "the other client was served only after the cut"
        # One WARNING line naming the stream's task, not an application error with a traceback.
        (cut_line,) = [line for line in log.splitlines() if CUT_OFF in line]
        assert " WARNING " in cut_line and "task_id=" in cut_line, cut_line
        assert "Exception in ASGI application" not in log and "Traceback" not in log
        await eventually(
            lambda: exports(metrics_url, llm_batcher_open_streams=0), 10, "no open stream"
        )
        port = sock.getsockname()[1]
        await eventually(
            lambda: not connections_from(api, port), 30, "the API to drop the connection"
        )
        # What reached the client is the start of the answer, without a terminal event.
        received = read_buffered(sock)
        assert received.startswith(b"HTTP/1.1 200"), received[:100]
        assert b"event: token" in received and b"event: done" not in received
    assert api.proc.popen.poll() is None
