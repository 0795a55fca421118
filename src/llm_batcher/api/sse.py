"""The HTTP response of an SSE stream: what it needs and no more.

A stream's bytes come from one async iterator (stream.TaskStream.events, which also makes the
pings); this class sends them as they come, one write per chunk. One task per response watches
for the client hanging up and, when it does, cancels the response's own task: the iterator
then ends through its `finally` (a task queued by this request is cancelled there) and the
response returns normally. A send that a client does not take within the send timeout fails
the response, as any error does, and the connection is closed: a watchdog timer per response
checks the send in progress every half timeout (a timeout around every send cost 4% of the
API's CPU in timer handles).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SEND_TIMEOUT_S = 30.0


class SseResponse(Response):
    """A `text/event-stream` response whose body is an async iterator of SSE frames."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,  # FastAPI's OpenAPI reads the default from the signature
        send_timeout_s: float = SEND_TIMEOUT_S,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``on_close`` runs when the response ends, even one that never started its frames
        (whose iterator's own cleanup then never runs)."""
        self.frames = frames
        self.on_close = on_close
        self.status_code = status_code
        self.background = None
        self.send_timeout_s = send_timeout_s
        self.init_headers(headers)
        self._streaming = False
        self._hung_up = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = self.frames
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._streaming = True
        sending_since: list[float] = []  # when the send in progress began, if one is
        timed_out = False
        timer: asyncio.TimerHandle | None = None

        def watchdog() -> None:
            nonlocal timer, timed_out
            if sending_since and loop.time() - sending_since[0] >= self.send_timeout_s:
                timed_out = True
                task.cancel()
                return
            timer = loop.call_later(self.send_timeout_s / 2, watchdog)

        timer = loop.call_later(self.send_timeout_s / 2, watchdog)
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        try:
            start = {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
            await send(start)
            async for chunk in frames:
                sending_since.append(loop.time())
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sending_since.clear()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if timed_out:
                task.uncancel()
                raise TimeoutError(
                    f"the client took no data for {self.send_timeout_s:.0f} s"
                ) from None
            if not self._hung_up:
                raise
            task.uncancel()  # the cancel was this response's own, for a client that has gone
        finally:
            self._streaming = False
            if timer is not None:
                timer.cancel()
            watcher.cancel()
            await frames.aclose()  # when a send failed, the iterator is suspended at a yield
            if self.on_close is not None:
                self.on_close()

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._streaming:
            self._hung_up = True
            task.cancel()
