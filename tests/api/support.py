"""What the API tests share: the real processes of a test, SSE readers (parsed and raw frames),
and looks at the Redis keys a test's API wrote."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from tests.helpers import Proc, start_api, start_worker

SLOW = "@mock ttft_ms=0 itl_ms=150\n"
"""A directive line for a context whose tokens arrive every 150 ms."""
TERMINALS = ("done", "error")
DONE_FIELDS = {"task_id", "text", "tokens", "batch_size", "queue_ms", "ttft_ms", "total_ms"}


def with_context(method: str, context: str) -> dict[str, Any]:
    """The request arguments that carry a context: the query of a GET, the JSON of a POST."""
    return {"params": {"context": context}} if method == "GET" else {"json": {"context": context}}


def words(n: int, tag: str = "w") -> str:
    """A context the mock answers with exactly ``n`` tokens."""
    return " ".join(f"{tag}{i}" for i in range(n))


@dataclass
class Api:
    proc: Proc
    url: str


class Stack:
    """The processes of one test, on one Redis server and key prefix; stop() ends them all."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    async def api(self, **settings: object) -> Api:
        """An API process; open streams are closed at once on stop unless the test says so."""
        settings.setdefault("shutdown_grace_s", 0)
        proc, url = await start_api(self.redis_url, self.prefix, self.log_dir, **settings)
        self.procs.append(proc)
        return Api(proc, url)

    async def worker(self, **settings: object) -> Proc:
        settings.setdefault("drain_s", 0)
        proc, _ = await start_worker(self.redis_url, self.prefix, self.log_dir, **settings)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:  # signal all first, so they shut down side by side
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop()


# --- SSE ------------------------------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str  # the last id seen so far, as EventSource keeps it
    retry: int | None

    @classmethod
    def of(cls, sse: ServerSentEvent) -> Event:
        return cls(sse.event, json.loads(sse.data) if sse.data else {}, sse.id, sse.retry)


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[Event]
    body: dict[str, Any] | None = None  # the JSON answer of a refused request
    ended_by_server: bool = True  # False when the reader stopped early (until)

    @property
    def kinds(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def tokens(self) -> list[Event]:
        return [e for e in self.events if e.event == "token"]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.tokens)

    @property
    def terminal(self) -> Event:
        ends = [e for e in self.events if e.event in TERMINALS]
        assert len(ends) == 1, f"expected one terminal event, got {self.kinds}"
        assert self.events[-1] is ends[0], f"the terminal event is not the last: {self.kinds}"
        return ends[0]


Until = Callable[[list[Event]], bool]


def after_tokens(n: int) -> Until:
    """Stop reading once ``n`` tokens arrived."""
    return lambda events: sum(e.event == "token" for e in events) >= n


def after_task(events: list[Event]) -> bool:
    return any(e.event == "task" for e in events)


async def dispatched(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """The events a browser's EventSource would dispatch.

    httpx-sse turns the blank line after a ping comment into an empty `message` once an id
    was seen; the SSE spec dispatches no event whose data is empty.
    """
    async for sse in events:
        if sse.data or sse.event != "message":
            yield sse


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    until: Until | None = None,
    timeout_s: float = 20,
    **kwargs: Any,
) -> Stream:
    """Read a /generate answer until the server ends it, or until ``until`` (then hang up)."""
    async with asyncio.timeout(timeout_s), aconnect_sse(client, method, url, **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            return Stream(response.status_code, response.headers, [], response.json())
        events: list[Event] = []
        async for sse in dispatched(source.aiter_sse()):
            events.append(Event.of(sse))
            if until is not None and until(events):
                return Stream(response.status_code, response.headers, events, None, False)
        return Stream(response.status_code, response.headers, events)


async def read_raw(
    client: httpx.AsyncClient, method: str, url: str, *, timeout_s: float = 20, **kwargs: Any
) -> tuple[httpx.Response, str]:
    """The whole answer as text, exactly as sent."""
    async with asyncio.timeout(timeout_s), client.stream(method, url, **kwargs) as response:
        text = "".join([chunk async for chunk in response.aiter_text()])
    return response, text


def frames(raw: str) -> list[list[str]]:
    """The blank-line separated frames of an SSE body, each as its lines (any SSE line end)."""
    lines = raw.replace("\r\n", "\n").replace("\r", "\n")
    return [frame.split("\n") for frame in lines.split("\n\n") if frame.strip("\n")]


def fields(frame: list[str]) -> dict[str, str]:
    """Field name -> value of one frame (comments left out)."""
    out = {}
    for line in frame:
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            out[name] = value.removeprefix(" ")
    return out


# --- Redis ----------------------------------------------------------------------------------


async def task_ids(redis: Redis, prefix: str) -> set[str]:
    """Every task hash under the prefix."""
    start = len(f"{prefix}:task:")
    return {k.decode()[start:] async for k in redis.scan_iter(match=f"{prefix}:task:*")}


async def queue_length(redis: Redis, prefix: str) -> int:
    """Entries in the task stream: tasks queued or running."""
    return int(await redis.xlen(f"{prefix}:tasks"))


async def task_state(redis: Redis, prefix: str, task_id: str) -> tuple[str | None, str | None]:
    """The task's state and error code; None for what is missing or empty."""
    state, code = await redis.hmget(f"{prefix}:task:{task_id}", ["state", "code"])
    return _text(state), _text(code)


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        value = value.decode()
    return value or None


async def assert_nothing_queued(redis: Redis, prefix: str) -> None:
    assert await queue_length(redis, prefix) == 0
    assert await task_ids(redis, prefix) == set()
