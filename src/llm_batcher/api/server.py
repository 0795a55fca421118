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

import uvicorn

from llm_batcher.api.app import create_app
from llm_batcher.api.state import AppState
from llm_batcher.settings import ApiSettings

log = logging.getLogger(__name__)


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
    )
    server = DrainingServer(config, settings.shutdown_grace_s)
    server.run()
    return 0
