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
from types import FrameType

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llm_batcher.api.app import create_app
from llm_batcher.api.state import AppState
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)
_LINGER_S = 2.0


class LingeringH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but a refused request's 400 reaches the client.

    uvicorn answers a request it cannot parse (a URL longer than h11_max_incomplete_event_size)
    with 400 and closes the socket at once; closing with unread input sends a TCP reset, and the
    client sees "connection reset" instead of the 400. Here the answer is followed by a FIN, and
    what the client is still sending is read and dropped for up to _LINGER_S before closing.
    """

    _lingering = False

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
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
        if not self._lingering:
            super().data_received(data)


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
        http=LingeringH11Protocol,
    )
    server = DrainingServer(config, settings.shutdown_grace_s)
    server.run()
    return 0
