"""The clients of a chaos soak: requests with varied `@mock` directives, read to their end over
as many connections as it takes, as a careful client does.

A request is submitted by POST with an `Idempotency-Key`, so that a submit whose answer was lost
(the API died, Redis was away) can be sent again without queueing a second task. Once the stream
has given its `task` event, a broken connection is resumed with `Last-Event-ID` on the next API
replica. A refusal (503 with Retry-After) is tried again after a short pause. Every request is
bounded by a deadline; whatever it saw is kept in an `Exchange` for the judgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from llm_batcher.bench.chaos_report import Disconnect, Exchange
from llm_batcher.check import mock_answer
from llm_batcher.contract import EventKind, SseParser

MIXES: dict[str, tuple[str, int]] = {
    "fast": ("@mock ttft_ms=20 itl_ms=10", 8),
    "slow": ("@mock ttft_ms=100 itl_ms=80", 16),
    "crash": ("@mock ttft_ms=50 itl_ms=50 fail=exit fail_after=2", 8),
    "garbage": ("@mock ttft_ms=50 itl_ms=50 fail=garbage fail_after=2", 8),
    "hang": ("@mock ttft_ms=50 itl_ms=50 fail=hang fail_after=2", 8),
}
"""Each kind of request: its directive line and the words of its answer."""
PATTERN = ("fast", "slow", "fast", "crash", "slow", "fast", "garbage", "slow", "fast",
           "slow", "fast", "slow", "fast", "slow", "fast", "slow", "fast", "hang")  # fmt: skip
"""The kinds of requests in turn: mostly answers, one in six poisoned, a hang in eighteen."""
RETRY_PAUSE_S = 0.25  # before trying again after a refusal or a broken connection
MAX_CONNECTIONS = 40  # tries of one request, at most
READ_TIMEOUT_S = 10.0  # silence on a stream (pings come every few seconds) before it counts broken


def make_request(index: int) -> tuple[str, str, str]:
    """(mix, context, expected answer) of request ``index``: deterministic, every body its own."""
    mix = PATTERN[index % len(PATTERN)]
    context = context_of(mix, f"r{index}")
    return mix, context, mock_answer(context)


def context_of(mix: str, tag: str) -> str:
    """A context of kind ``mix`` whose words all start with ``tag``."""
    directive, count = MIXES[mix]
    return directive + "\n" + " ".join(f"{tag}w{k}" for k in range(count))


@dataclass
class Clients:
    """The API replicas and one HTTP client; which requests are streaming from which API."""

    urls: Sequence[str]
    http: httpx.AsyncClient
    reading: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (api, tokens)

    def streaming_on(self, api: int) -> int:
        """Requests reading tokens from API replica ``api`` right now."""
        return sum(1 for a, tokens in self.reading.values() if a == api and tokens > 0)


async def run_request(clients: Clients, index: int, deadline_s: float) -> Exchange:
    """Send request ``index`` and read it to its terminal event, within ``deadline_s``."""
    mix, context, expected = make_request(index)
    x = Exchange(index, mix, expected, sent_s=time.monotonic())
    key = uuid.uuid4().hex
    try:
        async with asyncio.timeout(deadline_s):
            await _until_terminal(clients, x, context, key)
    except TimeoutError:
        x.problem = f"no terminal event within {deadline_s:.0f} s"
    finally:
        clients.reading.pop(index, None)
        x.end_s = time.monotonic()
    return x


async def _until_terminal(clients: Clients, x: Exchange, context: str, key: str) -> None:
    api = x.index % len(clients.urls)
    for _ in range(MAX_CONNECTIONS):
        last_id = next((e.id for e in reversed(x.events) if e.id), None)
        if last_id is None:
            request = clients.http.build_request(
                "POST", f"{clients.urls[api]}/generate", json={"context": context},
                headers={"Idempotency-Key": key},
            )  # fmt: skip
        else:
            request = clients.http.build_request(
                "GET", f"{clients.urls[api]}/generate", headers={"Last-Event-ID": last_id}
            )
        x.connections += 1
        try:
            if await _read(clients, x, request, api):
                return
        except (httpx.TransportError, ValueError) as exc:
            x.problem = f"{type(exc).__name__}: {exc}"  # kept if no later try gets through
        api = (api + 1) % len(clients.urls)
        await asyncio.sleep(RETRY_PAUSE_S)
    x.problem = f"gave up after {MAX_CONNECTIONS} connections; last: {x.problem}"


async def _read(clients: Clients, x: Exchange, request: httpx.Request, api: int) -> bool:
    """One connection; True once the terminal event came, or a refusal no retry can mend."""
    response = await clients.http.send(request, stream=True)
    try:
        if response.status_code != 200:
            await response.aread()
            code = _code(response)
            if response.status_code not in (429, 503):
                x.problem = f"HTTP {response.status_code} {code}"
                return True
            x.refusals.append(code)
            return False
        parser = SseParser()
        tokens = 0
        async for chunk in response.aiter_text():
            for event in parser.feed(chunk):
                x.events.append(event)
                tokens += event.kind == EventKind.TOKEN
                clients.reading[x.index] = (api, tokens)
                if event.is_terminal:
                    return True
        x.problem = "the stream ended without a terminal event"
        return False
    finally:
        clients.reading.pop(x.index, None)
        await response.aclose()


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code"))
    except ValueError:
        return f"HTTP {response.status_code}"


async def hang_up(clients: Clients, index: int, after: str, api: int) -> Disconnect:
    """A slow request whose client hangs up after its `task` event or its first token; the
    task's ending is filled in by whoever watches it."""
    context = context_of("slow", f"d{index}")
    d = Disconnect(index, after, sent_s=time.monotonic(), end_s=time.monotonic())
    url = f"{clients.urls[api]}/generate"
    with contextlib.suppress(httpx.TransportError, TimeoutError):
        async with (
            asyncio.timeout(READ_TIMEOUT_S),
            clients.http.stream("POST", url, json={"context": context}) as response,
        ):
            parser = SseParser()
            async for chunk in response.aiter_text():
                for event in parser.feed(chunk):
                    if event.kind == EventKind.TASK:
                        d.task_id = str(event.data["task_id"])
                    if (after == "task" and d.task_id) or event.kind == EventKind.TOKEN:
                        return d  # leaving the block closes the connection mid-stream
    return d


def http_client() -> httpx.AsyncClient:
    """A client for the soak's streams: no proxy from the environment, bounded reads."""
    timeout = httpx.Timeout(5.0, read=READ_TIMEOUT_S)
    return httpx.AsyncClient(timeout=timeout, trust_env=False)
