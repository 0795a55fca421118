"""The SSE response (api/sse.py) driven directly through ASGI: a client that takes no data
fails the response after the send timeout, a client that hangs up ends it cleanly, and the
frames iterator is closed either way."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from llm_batcher.api.server import GC_YOUNG_THRESHOLD, SendTimeoutLine, tune_gc
from llm_batcher.api.sse import SendTimeout, SseResponse


class Frames:
    """An endless frame source that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.sent = 0

    async def frames(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                self.sent += 1
                yield b"event: token\r\ndata: {}\r\n\r\n"
                await asyncio.sleep(0)
        finally:
            self.closed.set()


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_client_that_takes_no_data_fails_the_response_after_the_send_timeout() -> None:
    source = Frames()
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and source.sent >= 3:
            stuck.set()
            await asyncio.Event().wait()  # the socket buffer is full, the client reads nothing

    response = SseResponse(source.frames(), send_timeout_s=0.2, task_id="t-1")
    with pytest.raises(SendTimeout, match="took no data") as raised:
        await asyncio.wait_for(response({}, never_disconnects, send), 10)
    assert raised.value.task_id == "t-1"
    assert stuck.is_set()
    assert source.closed.is_set()


def test_a_send_timeout_is_logged_as_one_warning_line_with_its_task() -> None:
    # uvicorn logs what ends a response as "Exception in ASGI application", ERROR, traceback.
    def uvicorn_record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", None,
            (type(error), error, None),
        )  # fmt: skip

    record = uvicorn_record(SendTimeout("the client took no data for 5 s", "t-1"))
    assert SendTimeoutLine().filter(record)
    assert (record.levelno, record.levelname) == (logging.WARNING, "WARNING")
    assert record.getMessage() == "stream cut: the client took no data for 5 s"
    assert record.exc_info is None and record.__dict__["task_id"] == "t-1"
    other = uvicorn_record(RuntimeError("a bug"))
    assert SendTimeoutLine().filter(other)
    assert other.levelno == logging.ERROR and other.exc_info is not None


async def test_a_client_that_hangs_up_ends_the_response_without_an_error() -> None:
    source = Frames()
    hang_up = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 5:
            hang_up.set()
        await asyncio.sleep(0)

    response = SseResponse(source.frames(), send_timeout_s=30)
    await asyncio.wait_for(response({}, receive, send), 10)  # returns normally
    assert sent[0]["type"] == "http.response.start"
    assert source.closed.is_set()


async def test_a_finished_response_is_freed_at_once_without_the_garbage_collector() -> None:
    # A response in a reference cycle lives, with its connection's objects, until a full
    # collection: after 10,000 streams that one took 0.6 s, during which the API stood still.
    async def three_frames() -> AsyncGenerator[bytes, None]:
        for _ in range(3):
            yield b"event: token\r\ndata: {}\r\n\r\n"

    async def send(message: dict[str, Any]) -> None:
        return None

    gc.disable()
    try:
        response = SseResponse(three_frames(), send_timeout_s=5)
        freed = weakref.ref(response)
        await response({}, never_disconnects, send)
        del response
        for _ in range(3):  # the hang-up watcher, cancelled, ends on the next turns
            await asyncio.sleep(0)
        assert freed() is None
    finally:
        gc.enable()


def test_the_api_collects_garbage_less_often_and_not_what_start_up_made() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
