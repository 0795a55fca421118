"""The HTTP response of an SSE stream: what it needs and no more.

A stream's bytes come from one async iterator (stream.TaskStream.events, which also makes the
pings); this class sends them as they come, one write per chunk. One task per response watches
for the client hanging up and, when it does, cancels the response's own task: the iterator
then ends through its `finally` (a task queued by this request is cancelled there) and the
response returns normally. A send that a client does not take within the send timeout fails
the response (SendTimeout) and the connection is closed: a watchdog timer per response
checks the send in progress every half timeout (a timeout around every send cost 4% of the
API's CPU in timer handles).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

_CANCELS = 10  # cancellations of a response whose client hung up, at most
_CANCEL_AGAIN_S = 0.5  # between them


class SendTimeout(TimeoutError):
    """A client took no data for the send timeout: its response is cut, its connection closed.
    The client's doing, and expected now and then: the API logs it as one WARNING line
    (server.py), not as an application error with its traceback."""

    def __init__(self, message: str, task_id: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id


class SseResponse(Response):
    """A `text/event-stream` response whose body is an async iterator of SSE frames."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,  # FastAPI's OpenAPI reads the default from the signature
        *,
        send_timeout_s: float,
        on_close: Callable[[], None] | None = None,
        task_id: str | None = None,
    ) -> None:
        """``on_close`` runs when the response ends, even one that never started its frames
        (whose iterator's own cleanup then never runs); ``task_id`` names the stream's task in
        the log line of a send timeout."""
        self.frames = frames
        self.task_id = task_id
        self.on_close = on_close
        self.status_code = status_code
        self.background = None
        self.send_timeout_s = send_timeout_s
        self.init_headers(headers)
        self._streaming = False
        self._hung_up = False
        self._send_started: float | None = None  # loop time when the send in progress began

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = self.frames
        task = asyncio.current_task()
        assert task is not None
        self._streaming = True
        watchdog = _Watchdog(self, task)
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        try:
            await self.send_frames(frames, send)
        except asyncio.CancelledError:
            if watchdog.timed_out:
                task.uncancel()
                raise SendTimeout(
                    f"the client took no data for {self.send_timeout_s:g} s", self.task_id
                ) from None
            if not self._hung_up:
                raise
            while task.cancelling():  # the cancels were this response's own, for a client gone
                task.uncancel()
        finally:
            self._streaming = False
            watchdog.stop()
            watcher.cancel()
            await frames.aclose()  # when a send failed, the iterator is suspended at a yield
            if self.on_close is not None:
                self.on_close()

    async def send_frames(self, frames: AsyncGenerator[bytes, None], send: Send) -> None:
        """Send the headers, then each chunk as it comes."""
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send(start)
        async for chunk in frames:
            await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, message: Message) -> None:
        """A send the watchdog watches: one the client does not take in time fails the response."""
        self._send_started = asyncio.get_running_loop().time()
        try:
            await send(message)
        finally:
            self._send_started = None

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        # A cancellation can be lost in a library's await on the way (seen once in a few
        # hundred runs: a hang-up right as the stream subscribed went unnoticed, and its queued
        # task was never cancelled): until the response ends, cancel it again.
        for _ in range(_CANCELS):
            if not self._streaming:
                return
            self._hung_up = True
            task.cancel()
            await asyncio.sleep(_CANCEL_AGAIN_S)


class _Watchdog:
    """Cancels a response's task once a send of it has waited for the send timeout, checking
    every half timeout.

    Not a closure: a closure that schedules itself refers to itself through its own cell, and
    that cycle kept every response's objects, and its connection's, until a full garbage
    collection (after 10,000 streams, one of 0.6 s that stopped the API)."""

    def __init__(self, response: SseResponse, task: asyncio.Task[None]) -> None:
        self.response = response
        self.task = task
        self.timed_out = False
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(response.send_timeout_s / 2, self._check)

    def _check(self) -> None:
        response = self.response
        started = response._send_started
        if started is not None and self._loop.time() - started >= response.send_timeout_s:
            self.timed_out = True
            self.task.cancel()
            return
        self._timer = self._loop.call_later(response.send_timeout_s / 2, self._check)

    def stop(self) -> None:
        """No more checks; cancelling the timer also drops its reference to this watchdog."""
        self._timer.cancel()


class CollectedResponse(SseResponse):
    """A JSON response made from a whole stream: the frames are run to their end (a client that
    hangs up meanwhile ends them, as for a stream), then ``result()`` gives the status and body."""

    media_type = "application/json"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        result: Callable[[], tuple[int, bytes]],
        *,
        send_timeout_s: float,
        on_close: Callable[[], None] | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(frames, send_timeout_s=send_timeout_s, on_close=on_close, task_id=task_id)
        self.result = result

    async def send_frames(self, frames: AsyncGenerator[bytes, None], send: Send) -> None:
        async for _ in frames:
            pass
        status, body = self.result()
        headers = [*self.raw_headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send(send, {"type": "http.response.body", "body": body, "more_body": False})
