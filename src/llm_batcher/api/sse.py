"""The HTTP response of an SSE stream: what it needs and no more.

A stream's bytes come from one async iterator (stream.TaskStream.events, which also makes the
pings); this class sends them as they come, one write per chunk. One task per response watches
for the client hanging up and, when it does, cancels the response's own task: the iterator
then ends through its `finally` (a task queued by this request is cancelled there) and the
response returns normally. A send that a client does not take within the send timeout fails
the response, as any error does, and the connection is closed.
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
    ) -> None:
        self.frames = frames
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
        self._streaming = True
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        try:
            await self.send_frames(frames, send)
        except asyncio.CancelledError:
            if not self._hung_up:
                raise
            task.uncancel()  # the cancel was this response's own, for a client that has gone
        finally:
            self._streaming = False
            watcher.cancel()
            await frames.aclose()  # when a send failed, the iterator is suspended at a yield

    async def send_frames(self, frames: AsyncGenerator[bytes, None], send: Send) -> None:
        """Send the headers, then each chunk as it comes."""
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send(start)
        async for chunk in frames:
            async with asyncio.timeout(self.send_timeout_s):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._streaming:
            self._hung_up = True
            task.cancel()


class CollectedResponse(SseResponse):
    """A JSON response made from a whole stream: the frames are run to their end (a client that
    hangs up meanwhile ends them, as for a stream), then ``result()`` gives the status and body."""

    media_type = "application/json"

    def __init__(
        self, frames: AsyncGenerator[bytes, None], result: Callable[[], tuple[int, bytes]]
    ) -> None:
        super().__init__(frames)
        self.result = result

    async def send_frames(self, frames: AsyncGenerator[bytes, None], send: Send) -> None:
        async for _ in frames:
            pass
        status, body = self.result()
        headers = [*self.raw_headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        async with asyncio.timeout(self.send_timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": False})
