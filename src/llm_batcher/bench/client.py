"""One SSE request of the load generator, over a plain asyncio connection.

A minimal HTTP/1.1 client instead of httpx: ten thousand open streams and tens of thousands of
events a second must cost the generator less than they cost the API it measures. The answer is
checked as it arrives: task first, token indices in order with no gap, the right text, one
terminal event.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from llm_batcher.bench.sse import ChunkedDecoder, split_stamp
from llm_batcher.contract import Event, EventKind, SseParser

READ_SIZE = 65536


@dataclass
class Outcome:
    """What one request did; times are seconds on the generator's monotonic clock."""

    sent_s: float
    task_s: float | None = None
    first_s: float | None = None
    end_s: float | None = None
    ok: bool = False
    error: str | None = None
    status: int | None = None
    tokens: int = 0
    events: int = 0
    batch_id: str | None = None
    batch_size: int | None = None
    relay_us: list[int] = field(default_factory=list)


class Tracker:
    """Follows the events of one stream and checks them against the expected answer."""

    def __init__(self, expected: str, outcome: Outcome) -> None:
        self.expected = expected
        self.outcome = outcome
        self.task_id: str | None = None
        self.texts: list[str] = []  # token texts without their stamps
        self.raw: list[str] = []  # token texts as sent
        self.ended = False

    def on_event(self, event: Event, now_s: float, now_ns: int) -> None:
        out = self.outcome
        out.events += 1
        if self.ended:
            self.fail("event after the terminal event")
        elif event.kind == EventKind.TASK:
            self.task_id = event.data["task_id"]
            out.task_s = now_s
        elif event.kind == EventKind.TOKEN:
            self._on_token(event, now_s, now_ns)
        elif event.kind == EventKind.DONE:
            self._on_done(event.data, now_s)
        elif event.kind == EventKind.ERROR:
            self.ended = True
            out.end_s = now_s
            self.fail("error " + str(event.data.get("code")))
        else:
            self.fail(f"unexpected event {str(event.kind)!r}")

    def _on_token(self, event: Event, now_s: float, now_ns: int) -> None:
        if event.id != f"{self.task_id}:{len(self.raw)}":
            self.fail(f"token id {event.id!r} out of order")
            return
        raw = event.data["text"]
        stamp_ns, text = split_stamp(raw)
        if stamp_ns is not None:
            self.outcome.relay_us.append((now_ns - stamp_ns) // 1000)
        if not self.raw:
            self.outcome.first_s = now_s
        self.raw.append(raw)
        self.texts.append(text)

    def _on_done(self, data: dict[str, object], now_s: float) -> None:
        out = self.outcome
        self.ended = True
        out.end_s = now_s
        out.tokens = len(self.raw)
        batch_size = data.get("batch_size")
        out.batch_size = batch_size if isinstance(batch_size, int) else None
        out.batch_id = str(data.get("batch_id"))
        if data.get("task_id") != self.task_id or data.get("tokens") != len(self.raw):
            self.fail("done event does not match the stream")
        elif data.get("text") != "".join(self.raw) or "".join(self.texts) != self.expected:
            self.fail("wrong answer")
        elif out.error is None:
            out.ok = True

    def fail(self, reason: str) -> None:
        self.outcome.ok = False
        if self.outcome.error is None:
            self.outcome.error = reason


def request_bytes(host: str, port: int, context: str, keep_alive: bool) -> bytes:
    """A GET /generate request for ``context``."""
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"GET /generate?context={quote(context, safe='')} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nAccept: text/event-stream\r\nConnection: {connection}\r\n\r\n"
    ).encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


class Connection:
    """One keep-alive HTTP connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            # A connection the server already reset has nothing left to release.
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def stream(
        self, context: str, expected: str, outcome: Outcome, timeout_s: float, keep_alive: bool
    ) -> None:
        """Send one request and read its whole stream into ``outcome``; errors end up there."""
        outcome.sent_s = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await self._exchange(context, Tracker(expected, outcome), keep_alive)
        except TimeoutError:
            outcome.error = outcome.error or f"no terminal event within {timeout_s:.0f} s"
            await self.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, LookupError, TypeError) as exc:
            outcome.error = outcome.error or f"{type(exc).__name__}: {exc}"
            await self.close()
        if outcome.error is not None:
            outcome.ok = False
        if outcome.end_s is None:
            outcome.end_s = time.monotonic()

    async def _exchange(self, context: str, tracker: Tracker, keep_alive: bool) -> None:
        reused = self._reader is not None
        if self._reader is None:
            await self._open()
        try:
            status, headers = await self._send(context, keep_alive)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            # The server closed the idle connection just before this request: nothing was
            # read, so nothing was queued; one retry on a new connection.
            await self.close()
            await self._open()
            status, headers = await self._send(context, keep_alive)
        tracker.outcome.status = status
        if status != 200:
            await self._refused(headers, tracker.outcome)
            return
        await self._read_body(headers, tracker)
        if not keep_alive or headers.get("connection") == "close":
            await self.close()

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def _send(self, context: str, keep_alive: bool) -> tuple[int, dict[str, str]]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request_bytes(self.host, self.port, context, keep_alive))
        return parse_head(await self._reader.readuntil(b"\r\n\r\n"))

    async def _refused(self, headers: dict[str, str], outcome: Outcome) -> None:
        assert self._reader is not None
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        try:
            code = json.loads(body).get("code", "")
        except ValueError:
            code = body[:60].decode("utf-8", "replace")
        outcome.error = f"HTTP {outcome.status} {code}"
        await self.close()

    async def _read_body(self, headers: dict[str, str], tracker: Tracker) -> None:
        assert self._reader is not None
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        decoder = ChunkedDecoder()
        text = codecs.getincrementaldecoder("utf-8")()
        parser = SseParser()
        while not decoder.finished:
            data = await self._reader.read(READ_SIZE)
            now_ns, now_s = time.time_ns(), time.monotonic()
            if not data:
                if chunked:
                    raise ConnectionError("connection closed in the middle of the stream")
                break
            payload = decoder.feed(data) if chunked else data
            for event in parser.feed(text.decode(payload)):
                tracker.on_event(event, now_s, now_ns)
        if not chunked:
            await self.close()
        if not tracker.ended:
            tracker.fail("stream ended without a terminal event")
