"""Reading /generate answers as a client does: httpx streaming, parsed and checked with the
stream-contract module (llm_batcher.contract), over one connection or several (resumes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_batcher.contract import Event, EventKind, SseParser, Verdict, check, parse

STREAM_TIMEOUT_S = 30.0
"""The longest any one stream may take before the test fails."""
SLOW = "@mock ttft_ms=0 itl_ms=150\n"
"""A directive line for a context whose tokens arrive every 150 ms."""


def words(n: int, tag: str = "w") -> str:
    """A context the mock answers with exactly ``n`` distinct tokens (a repeat or a loss shows)."""
    return " ".join(f"{tag}{i}" for i in range(n))


def with_context(method: str, context: str) -> dict[str, Any]:
    """The request arguments that carry a context: the query of a GET, the JSON of a POST."""
    return {"params": {"context": context}} if method == "GET" else {"json": {"context": context}}


@dataclass
class Stream:
    """Everything one client saw of one /generate answer, over one or more connections."""

    events: list[Event] = field(default_factory=list)
    status: int = 200
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: Any = None  # the JSON answer of a refused request
    ended_by_server: bool = True  # False when the reader stopped early (until)
    connections: int = 0

    @property
    def kinds(self) -> list[str]:
        return [str(e.kind) for e in self.events]

    @property
    def tokens(self) -> list[Event]:
        return [e for e in self.events if e.kind == EventKind.TOKEN]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.tokens)

    @property
    def terminals(self) -> list[Event]:
        return [e for e in self.events if e.is_terminal]

    @property
    def ended(self) -> bool:
        return bool(self.terminals)

    @property
    def terminal(self) -> Event:
        """The one terminal event, which must be the last."""
        ends = self.terminals
        assert len(ends) == 1, f"expected one terminal event, got {self.kinds}"
        assert self.events[-1] is ends[0], f"the terminal event is not the last: {self.kinds}"
        return ends[0]

    @property
    def task_id(self) -> str:
        return str(self.events[0].data["task_id"])

    @property
    def last_id(self) -> str:
        """The id of the last event that carried one: what EventSource sends on reconnect."""
        return [e.id for e in self.events if e.id][-1]

    def verdict(self, **expect: Any) -> Verdict:
        """The contract's check of the whole answer; a resumed connection's `task` event must
        carry the last id seen before it, and its tokens continue the earlier ones."""
        merged: list[Event] = []
        for event in self.events:
            if merged and event.kind == EventKind.TASK:
                last = [e.id for e in merged if e.id][-1]
                assert event.id == last, f"resumed with {event.id}, the last id seen was {last}"
                continue
            merged.append(event)
        return check(merged, **expect)

    def assert_exact(self, expected: str) -> dict[str, Any]:
        """Exactly ``expected``: token ids 0..n-1 in order, no repeat, then one `done`."""
        assert self.status == 200, (self.status, self.body)
        verdict = self.verdict(expected_text=expected)
        assert verdict.ok, str(verdict)
        return self.terminal.data

    def assert_error(self) -> dict[str, Any]:
        """The stream ended with one `error` carrying a code and a message."""
        verdict = self.verdict(allow_error=True)
        assert verdict.ok, str(verdict)
        assert self.terminal.kind == EventKind.ERROR, self.kinds[-3:]
        return self.terminal.data


Until = Callable[[list[Event]], bool]


def after_tokens(n: int) -> Until:
    """Stop reading once ``n`` tokens arrived on this connection."""
    return lambda events: sum(e.kind == EventKind.TOKEN for e in events) >= n


def after_task(events: list[Event]) -> bool:
    return any(e.kind == EventKind.TASK for e in events)


async def sse_events(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of a streamed response, as they arrive."""
    parser = SseParser()
    async for chunk in response.aiter_text():
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    into: Stream | None = None,
    until: Until | None = None,
    timeout_s: float = STREAM_TIMEOUT_S,
    **kwargs: Any,
) -> Stream:
    """Read a /generate answer until the server ends it, or until ``until`` holds for this
    connection's events (then hang up). ``into`` adds this connection to an earlier stream."""
    stream = into if into is not None else Stream()
    stream.connections += 1
    events: list[Event] = []
    async with asyncio.timeout(timeout_s), client.stream(method, url, **kwargs) as response:
        stream.status, stream.headers = response.status_code, response.headers
        if response.status_code != 200:
            await response.aread()
            stream.body = response.json()
            return stream
        async for event in sse_events(response):
            events.append(event)
            stream.events.append(event)
            if until is not None and until(events):
                stream.ended_by_server = False
                return stream
    stream.ended_by_server = True
    return stream


async def generate(
    client: httpx.AsyncClient, base_url: str, context: str, *, post: bool = False
) -> Stream:
    """One client: submit ``context`` and read its whole stream (bounded)."""
    method = "POST" if post else "GET"
    return await read_sse(client, method, f"{base_url}/generate", **with_context(method, context))


async def resume(client: httpx.AsyncClient, base_url: str, stream: Stream) -> None:
    """Reconnect with Last-Event-ID (the last id seen) and read the rest of the stream."""
    headers = {"Last-Event-ID": stream.last_id}
    await read_sse(client, "GET", f"{base_url}/generate", into=stream, headers=headers)


# --- the raw wire ---------------------------------------------------------------------------


async def read_raw(
    client: httpx.AsyncClient, method: str, url: str, *, timeout_s: float = 20, **kwargs: Any
) -> tuple[httpx.Response, str]:
    """The whole answer as text, exactly as sent."""
    async with asyncio.timeout(timeout_s), client.stream(method, url, **kwargs) as response:
        text = "".join([chunk async for chunk in response.aiter_text()])
    return response, text


@dataclass
class RawResponse:
    """An HTTP answer read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def stream(self) -> Stream:
        """The SSE events of the body (the server closed the stream after the terminal one)."""
        assert self.headers.get("content-type", "").startswith("text/event-stream"), self.headers
        return Stream(parse(self.body.decode("utf-8")), self.status, connections=1)


async def raw_get(base_url: str, target: bytes, timeout_s: float = STREAM_TIMEOUT_S) -> RawResponse:
    """GET ``target`` exactly as given (httpx refuses queries over 64 KiB and may re-encode)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode()
            writer.write(head + b"\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):  # a refused request: read the answer
                await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)
