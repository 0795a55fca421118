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
import logging
from collections.abc import Iterable
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llm_batcher.api.app import create_app
from llm_batcher.api.headers import RAW_SECURITY_HEADERS
from llm_batcher.api.state import AppState
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)
_LINGER_S = 2.0
_SPARE_CONNECTIONS = 1024
_READING = (h11.IDLE, h11.SEND_BODY)  # h11 states of a client still sending its request
_TIMEOUT_BODY = b"the request did not arrive in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    + b"".join(b"%s: %s\r\n" % pair for pair in RAW_SECURITY_HEADERS)
    + b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class CoalescingTransport(asyncio.Transport):
    """A socket transport whose writes of one event-loop turn leave in one send.

    uvicorn writes a streamed response's headers, each body chunk and the chunked terminator
    with a system call each: four per /generate stream, a fifth of the API's CPU with a fast
    model. A stream's `task` event follows its headers in the same turn, and its last events
    come with the terminator; joined, they take two. The data leaves at the start of the next
    turn, before the I/O polled then is handled: nothing waits for company.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

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


class LingeringH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but its writes of one loop turn leave together
    (CoalescingTransport), a refused request's 400 reaches the client, and a request must
    arrive in time.

    uvicorn answers a request it cannot parse (a URL longer than h11_max_incomplete_event_size)
    with 400 and closes the socket at once; closing with unread input sends a TCP reset, and the
    client sees "connection reset" instead of the 400. Here the answer is followed by a FIN, and
    what the client is still sending is read and dropped for up to _LINGER_S before closing.

    uvicorn times out only idle keep-alive connections: a client that opens a connection and
    sends nothing, or half a request, holds it (and up to the largest header block in memory)
    forever. Here a request's headers and body must all arrive within ``read_timeout_s`` of the
    connection's opening or of the request's first byte; else the connection is closed (with
    a 408 when no response has started).
    """

    _lingering = False
    _read_timer: asyncio.TimerHandle | None = None
    read_timeout_s = 10.0  # serve() sets it from the settings, in a subclass

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))
        self._arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

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
        if self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
            self.transport.write(_REQUEST_TIMEOUT)  # nothing answered yet: say why
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"connection", b"close"),
            *RAW_SECURITY_HEADERS,
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=msg.encode("ascii")),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._arm_read_timer()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state not in _READING:
            self._disarm_read_timer()  # the whole request is in


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


def serve(settings: ApiSettings) -> int:
    """Serve the API until a signal; returns the exit status."""
    max_get_bytes = settings.max_context_bytes * 3 + 16384  # a percent-encoded context fits
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=max_get_bytes,
        http=type(
            "Protocol", (LingeringH11Protocol,), {"read_timeout_s": settings.request_read_timeout_s}
        ),
        # Room for every allowed stream plus idle keep-alive connections; past it uvicorn
        # answers 503 before the app (the app refuses streams past max_streams itself).
        limit_concurrency=settings.max_streams + _SPARE_CONNECTIONS,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    server = DrainingServer(config, settings.shutdown_grace_s)
    server.run()
    return 0
