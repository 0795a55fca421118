"""Running the API under uvicorn, with the shutdown order SSE clients need.

On SIGTERM (or Ctrl-C):
1. readiness fails and /generate answers 503 at once, so load balancers stop sending new work;
2. open streams may finish for up to ``shutdown_grace_s``;
3. the streams still open are closed *without* a terminal event, so each client's EventSource
   reconnects (after the `retry:` delay) to another replica and resumes with Last-Event-ID;
4. uvicorn stops; the lifespan closes the pub/sub hub and Redis. Exit status 0.
A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Iterable
from types import FrameType
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llm_batcher.api.app import create_app
from llm_batcher.api.headers import RAW_SECURITY_HEADERS
from llm_batcher.api.sse import SendTimeout
from llm_batcher.api.state import AppState
from llm_batcher.listeners import inherited
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)
_LINGER_S = 2.0
_PARSE_URL_MAX = 65535  # the longest URL httptools.parse_url takes
_SPARE_CONNECTIONS = 1024
_TIMEOUT_BODY = b"the request did not arrive in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    + b"".join(b"%s: %s\r\n" % pair for pair in RAW_SECURITY_HEADERS)
    + b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
_BAD_REQUEST_HEAD = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    + b"".join(b"%s: %s\r\n" % pair for pair in RAW_SECURITY_HEADERS)
    + b"connection: close\r\n"
)


class CoalescingTransport(asyncio.Transport):
    """A socket transport whose writes of one event-loop turn leave in one send.

    uvicorn writes a streamed response's headers, each body chunk and the chunked terminator
    with a system call each: four per /generate stream, a fifth of the API's CPU with a fast
    model. A stream's `task` event follows its headers in the same turn, and its last events
    come with the terminator; joined, they take two. The data leaves at the start of the next
    turn, before the I/O polled then is handled: nothing waits for company.

    A connection closed with data its client has not taken is aborted if the data is still
    there ``close_wait_s`` later. asyncio's close waits for the data to leave, forever for a
    client that reads nothing: after the send timeout had ended such a client's stream, its
    socket and its unsent bytes stayed in the API as long as the client kept the connection.
    """

    def __init__(self, transport: asyncio.Transport, close_wait_s: float) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._close_wait_s = close_wait_s

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()
        if self._transport.get_write_buffer_size():
            self._loop.call_later(self._close_wait_s, self._abort_unsent)

    def _abort_unsent(self) -> None:
        if self._transport.get_write_buffer_size():  # else it is closed already, or closing
            log.info("aborting a closed connection whose client did not take its last data")
            self._transport.abort()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class ApiHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (a C parser: h11's pure-Python one cost the API about a
    quarter of its CPU per request), with four changes:

    - writes of one loop turn leave in one send, and a connection closed with data its client
      does not take is aborted after the send timeout (CoalescingTransport);
    - a request head (URL and headers) larger than ``head_limit`` bytes is refused with 400:
      httptools itself has no limit, and a client could make the API buffer any amount;
    - a refused request's 400 reaches the client. uvicorn answers a request it cannot parse
      with 400 and closes the socket at once; closing with unread input sends a TCP reset, and
      the client sees "connection reset" instead of the 400. Here the answer is followed by a
      FIN, and what the client is still sending is read and dropped for up to _LINGER_S;
    - a request must arrive in time. uvicorn times out only idle keep-alive connections: a
      client that opens a connection and sends nothing, or half a request, holds it forever.
      Here a request's head and body must all arrive within ``read_timeout_s`` of the
      connection's opening or of the request's first byte; else the connection is closed, with
      a 408 when its head had not arrived.
    """

    _lingering = False
    _head_bytes = 0
    _in_head = True  # the current request's head has not all arrived
    _reading = True  # the current request has not all arrived
    _read_timer: asyncio.TimerHandle | None = None

    def __init__(
        self,
        *args: Any,
        head_limit: int,
        read_timeout_s: float,
        send_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_limit = head_limit
        self.read_timeout_s = read_timeout_s
        self.send_timeout_s = send_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.send_timeout_s))
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self._reading:  # the first byte of a request on a kept-alive connection
            self._reading = self._in_head = True
            self._arm_read_timer()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._reading = self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # httptools.parse_url refuses URLs over 64 KiB, and a GET context may be longer: the
        # query is split off here, and put into the scope before the request's task runs.
        if len(self.url) <= _PARSE_URL_MAX:
            super().on_headers_complete()
            return
        path, _, query = self.url.partition(b"?")
        self.url = path
        super().on_headers_complete()
        self.scope["query_string"] = query

    def on_message_complete(self) -> None:
        self._reading = False
        self._disarm_read_timer()  # the whole request is in
        super().on_message_complete()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.head_limit:
            # raised through the parser as its callback error: uvicorn answers 400
            raise ValueError(f"the request head is larger than {self.head_limit} bytes")

    def _arm_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        log.info(
            "closing a connection whose request did not arrive within %.0f s", self.read_timeout_s
        )
        if self._in_head:
            self.transport.write(_REQUEST_TIMEOUT)  # nothing answered yet: say why
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = msg.encode("ascii")
        self.transport.write(
            _BAD_REQUEST_HEAD + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self._lingering = True
        self._disarm_read_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_S, self.transport.close)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first signal drains SSE streams before stopping."""

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not re-raised after shutdown: a drained
        # API exits with status 0.
        if self._drain_task is not None or self.should_exit:
            self.should_exit = self.force_exit = True
            return
        loop = asyncio.get_event_loop()
        self._drain_task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        state: AppState | None = getattr(self.config.loaded_app.app.state, "llmb", None)
        if state is None:  # start-up not finished
            self.should_exit = True
            return
        state.draining = True
        hub = state.hub
        log.info(
            "shutting down: %d open stream(s) may finish within %.0f s",
            hub.open_streams,
            self.grace_s,
        )
        if not await hub.wait_idle(self.grace_s):
            log.info("closing %d stream(s) for their clients to resume elsewhere", hub.open_streams)
        hub.close_all()
        self.should_exit = True


class SendTimeoutLine(logging.Filter):
    """uvicorn logs an exception that ends a response as ERROR, with its traceback. A send
    timeout (sse.SendTimeout) is a client's doing: one WARNING line, with the stream's task."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SendTimeout):
            record.levelno, record.levelname = (
                logging.WARNING,
                logging.getLevelName(logging.WARNING),
            )
            record.msg, record.args = "stream cut: %s", (error,)
            record.exc_info = record.exc_text = None
            record.task_id = error.task_id
        return True


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (Python's default: 700)."""


def tune_gc() -> None:
    """Fewer garbage collections for a process that holds many streams.

    Each open stream keeps about a hundred objects that the collector tracks: with 10,000 open,
    a full collection walks a million objects (0.65 s here), and with Python's default
    thresholds the collections while 10,000 streams opened took 4 s of CPU, nearly all of them
    full ones that found nothing to free. Starting the young generation's collections 14 times
    less often (the older ones follow from it) cut that to 0.9 s, with no change per request.
    What start-up made (modules, classes, the app) is moved out of the collector's sight too
    (gc.freeze): it lives as long as the process."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve(settings: ApiSettings) -> int:
    """Serve the API until a signal; returns the exit status."""
    logging.getLogger("uvicorn.error").addFilter(SendTimeoutLine())
    server = DrainingServer(uvicorn_config(settings), settings.shutdown_grace_s)
    tune_gc()
    if settings.listen_fd is None:
        server.run()
        return 0
    sock = inherited(settings.listen_fd)
    host, port = sock.getsockname()[:2]
    log.info("API listening on %s:%d (a socket from the parent process)", host, port)
    server.run(sockets=[sock])
    return 0


def uvicorn_config(settings: ApiSettings) -> uvicorn.Config:
    """How uvicorn serves the app: httptools with the API's bounds, on asyncio's own loop.

    Named, since uvicorn picks uvloop whenever it is installed: uvloop fails a write to a
    transport it has closed with a RuntimeError, where asyncio reports a lost connection, which
    redis-py and the hub handle (tests/api/test_event_loop.py, docs/benchmarks.md)."""
    # a percent-encoded context fits, with room for the other parameters and the headers
    head_limit = settings.max_context_bytes * 3 + 16384
    protocol = functools.partial(
        ApiHttpProtocol,
        head_limit=head_limit,
        read_timeout_s=settings.request_read_timeout_s,
        send_timeout_s=settings.send_timeout_s,
    )
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="asyncio",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=cast(type[asyncio.Protocol], protocol),
        # Room for every allowed stream plus idle keep-alive connections; past it uvicorn
        # answers 503 before the app (the app refuses streams past max_streams itself).
        limit_concurrency=settings.max_streams + _SPARE_CONNECTIONS,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
