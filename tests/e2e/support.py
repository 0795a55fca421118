"""Helpers of the end-to-end suites: real API and worker processes, SSE clients, `up`.

Every process is started the way `llm-batcher up` starts it (its own session, a free port, the
LLMB_* environment), on the session Redis with a key prefix of the test's own, and checked from
outside with httpx and httpx_sse, as a client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from httpx_sse import aconnect_sse

from llm_batcher.local.embedded_redis import free_port
from tests.helpers import BIN, Proc, base_env, eventually, start_api, wait_http

STREAM_TIMEOUT_S = 30.0
"""The longest any one stream of these suites may take before the test fails."""


# --- processes ------------------------------------------------------------------------------


@dataclass
class Api:
    """An `llm-batcher api` process and its base URL."""

    proc: Proc
    url: str


@dataclass
class Worker:
    """An `llm-batcher worker` process, its health port and its id in Redis."""

    proc: Proc
    port: int
    id: str


@dataclass
class Cluster:
    """APIs and workers of one test on one Redis and key prefix; closed by the fixture."""

    redis_url: str
    prefix: str
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    async def api(self, **settings: object) -> Api:
        """Start `llm-batcher api` on a free port (tests.helpers.start_api)."""
        settings.setdefault("shutdown_grace_s", 1)  # tests stop APIs with streams still open
        settings.setdefault("log_level", "INFO")  # DEBUG logs every SSE chunk: slow on big answers
        proc, url = await start_api(self.redis_url, self.prefix, self.log_dir, **settings)
        self.procs.append(proc)
        return Api(proc, url)

    async def worker(self, **settings: object) -> Worker:
        """Start `llm-batcher worker` (as tests.helpers.start_worker, but killed if cancelled)."""
        worker_id = str(settings.setdefault("worker_id", f"w-{uuid.uuid4().hex[:6]}"))
        settings.setdefault("lease_ms", 1500)
        settings.setdefault("drain_s", 2)
        settings.setdefault("tmp_dir", str(self.log_dir))
        port = free_port()
        env = base_env(self.redis_url, self.prefix, health_port=port, **settings)
        proc = Proc([str(BIN / "llm-batcher"), "worker"], env, self.log_dir / f"{worker_id}.log")
        self.procs.append(proc)
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        return Worker(proc, port, worker_id)

    async def wait_ready(self, api: Api, timeout_s: float = 20) -> None:
        """Wait until the API's /readyz says Redis and a live worker are there."""
        await wait_http(f"{api.url}/readyz", api.proc, timeout_s)

    def close(self) -> None:
        """SIGTERM everything at once, then wait for each (killing what does not stop).

        One signal only: a second SIGTERM makes uvicorn skip its lifespan shutdown.
        """
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.popen.poll() is None:
                proc.kill_group()
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in self.procs)


async def start_together(*starts: Coroutine[Any, Any, Any]) -> list[Any]:
    """Start processes concurrently; if one fails, the others are cancelled (and clean up)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(start) for start in starts]
    return [task.result() for task in tasks]


# --- SSE clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One SSE event as the client parsed it."""

    event: str
    id: str
    data: dict[str, Any]

    @property
    def index(self) -> int:
        """The token position carried by the id (`<task_id>:<index>`)."""
        return int(self.id.rpartition(":")[2])


@dataclass
class Answer:
    """Everything one client saw for one task, over one or more connections."""

    events: list[Event] = field(default_factory=list)
    connections: int = 0

    @property
    def task_id(self) -> str:
        return self.events[0].data["task_id"]

    @property
    def tokens(self) -> list[Event]:
        return [e for e in self.events if e.event == "token"]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.tokens)

    @property
    def terminals(self) -> list[Event]:
        return [e for e in self.events if e.event in ("done", "error")]

    @property
    def ended(self) -> bool:
        return bool(self.terminals)

    @property
    def last_id(self) -> str:
        """The id of the last event that carried one: what EventSource sends on reconnect."""
        return [e.id for e in self.events if e.id][-1]

    def assert_exact(self, expected: str) -> dict[str, Any]:
        """Exactly ``expected``: token ids 0..n-1 in order, no repeat, then one `done`."""
        assert self.events[0].event == "task", self.events[:2]
        assert self.events[0].id == f"{self.task_id}:-1"
        ids = [e.id for e in self.tokens]
        assert ids == [f"{self.task_id}:{i}" for i in range(len(ids))], ids
        assert [e.event for e in self.terminals] == ["done"], self.terminals
        assert self.events[-1].event == "done", self.events[-3:]
        assert self.text == expected, (self.text[:200], expected[:200])
        done = self.terminals[0].data
        assert done["task_id"] == self.task_id
        assert done["text"] == expected
        assert done["tokens"] == len(ids)
        return done

    def assert_error(self) -> dict[str, Any]:
        """The stream ended with one `error` carrying a code and a message."""
        assert [e.event for e in self.terminals] == ["error"], self.events[-3:]
        assert self.events[-1].event == "error"
        data = self.terminals[0].data
        assert isinstance(data.get("code"), str) and data["code"], data
        assert isinstance(data.get("message"), str), data
        return data


async def read_events(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    answer: Answer,
    *,
    stop_after_tokens: int | None = None,
    **kwargs: Any,
) -> None:
    """Open one SSE connection and add its events to ``answer``.

    Returns at the terminal event, when the server ends the stream, or (to drop the
    connection on purpose) after ``stop_after_tokens`` tokens of this connection.
    """
    answer.connections += 1
    seen = 0
    async with aconnect_sse(client, method, url, **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{method} {url}: {response.status_code} {response.text[:300]}")
        async for sse in source.aiter_sse():
            if sse.event == "message" and not sse.data:
                continue  # a keep-alive comment; httpx_sse repeats the last id on it
            event = Event(sse.event, sse.id, json.loads(sse.data))
            answer.events.append(event)
            if event.event in ("done", "error"):
                return
            if event.event == "token":
                seen += 1
                if stop_after_tokens is not None and seen >= stop_after_tokens:
                    return


async def generate(
    client: httpx.AsyncClient, base_url: str, context: str, *, post: bool = False
) -> Answer:
    """One client: submit ``context`` and read its whole stream (bounded)."""
    answer = Answer()
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        if post:
            await read_events(
                client, "POST", f"{base_url}/generate", answer, json={"context": context}
            )
        else:
            await read_events(
                client, "GET", f"{base_url}/generate", answer, params={"context": context}
            )
    return answer


async def resume(client: httpx.AsyncClient, base_url: str, answer: Answer) -> None:
    """Reconnect with Last-Event-ID (the last id seen) and read the rest of the stream."""
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        await read_events(
            client,
            "GET",
            f"{base_url}/generate",
            answer,
            headers={"Last-Event-ID": answer.last_id},
        )


@dataclass
class RawResponse:
    """An HTTP answer read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def answer(self) -> Answer:
        """The SSE events of the body (the server closed the stream after the terminal one)."""
        assert self.headers.get("content-type", "").startswith("text/event-stream"), self.headers
        answer = Answer(connections=1)
        text = self.body.decode("utf-8").replace("\r\n", "\n")
        for block in text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":"
            )
            if "data" in fields:
                data = json.loads(fields["data"])
                answer.events.append(
                    Event(fields.get("event", "message"), fields.get("id", ""), data)
                )
        return answer


async def raw_get(base_url: str, target: bytes, timeout_s: float = STREAM_TIMEOUT_S) -> RawResponse:
    """GET ``target`` exactly as given (httpx refuses queries over 64 KiB and may re-encode)."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = b"GET " + target + b" HTTP/1.1\r\nHost: " + host.encode()
            writer.write(head + b"\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):  # a refused request: read the answer
                await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


async def while_clients_run(
    condition: Callable[[], bool], clients: list[asyncio.Task[None]], timeout_s: float, what: str
) -> None:
    """Wait for ``condition``; a client that failed meanwhile fails the test at once."""

    def check() -> bool:
        for task in clients:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"a client failed while waiting for {what}") from (
                    task.exception()
                )
        return condition()

    await eventually(check, timeout_s, what)


# --- misc -------------------------------------------------------------------------------------


def words(n: int, tag: str) -> str:
    """A context body of ``n`` distinct words (so a repeated or lost token shows)."""
    return " ".join(f"{tag}-w{i}" for i in range(n))


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie waiting for its parent counts as gone)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            continue
    return running


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` right now."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_lines(procs: list[psutil.Process]) -> dict[psutil.Process, str]:
    """The command line of each of ``procs`` still alive (one may exit while we look)."""
    lines = {}
    for proc in alive(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            lines[proc] = " ".join(proc.cmdline())
    return lines


def mock_children(pid: int) -> list[psutil.Process]:
    """The live `llm-mock` processes below ``pid``."""
    return [p for p, line in command_lines(descendants(pid)).items() if "llm-mock" in line]


# --- llm-batcher up ---------------------------------------------------------------------------


@dataclass
class Up:
    """`llm-batcher up` as a subprocess, its output read line by line as it comes."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, args: list[str], cwd: Path, env: dict[str, str]) -> Up:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "llm-batcher"), "up", *args,
            cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        up = cls(proc)
        up.reader = asyncio.create_task(up._read())
        return up

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def wait_line(self, pattern: str, timeout_s: float = 30, count: int = 1) -> str:
        """Wait until ``count`` lines of the output match ``pattern``; returns the last one."""

        def seen() -> bool:
            if self.proc.returncode is not None and self.reader and self.reader.done():
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.output()}")
            return len(self.matching(pattern)) >= count

        await eventually(seen, timeout_s, f"a line matching {pattern!r}")
        return self.matching(pattern)[count - 1]

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM `up` and wait for it to exit (bounded); returns its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code

    async def close(self) -> None:
        """However the test went: stop `up`, then kill anything it left behind."""
        left = descendants(self.proc.pid)
        if self.proc.returncode is None:
            try:
                await self.terminate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        for proc in alive(left):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    def output(self) -> str:
        return "\n".join(self.lines[-200:])


def up_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of `up`: no LLMB_* from outside, temp files in a folder of the test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")}
    env.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1", **extra)
    return env
