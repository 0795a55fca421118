"""Tasks and their answers in Redis, read with the package's own queue: submitting as the API
does, waiting for a result stream, and checking it against the stream contract."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.contract import Event, check, done_event, error_event, task_event, token_event
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, WORKER_GROUP, Keys, token_entry_id
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry
from llm_batcher.protocol.tasks import StartedTask


def make_queue(redis: Redis, prefix: str, ttl_s: float = 300) -> TaskQueue:
    return TaskQueue.create(redis, Keys(prefix), result_ttl_s=ttl_s)


async def submit(queue: TaskQueue, context: str, timeout_s: float = 60, **limits: Any) -> str:
    """Queue a task as the API does (``limits``: max_tokens, stop); returns its id."""
    task_id = str(uuid.uuid4())
    now = now_ms()
    deadline = now + int(timeout_s * 1000)
    assert await queue.tasks.submit(
        task_id, context, now_ms=now, deadline_ms=deadline, max_queue=10_000, **limits
    )
    return task_id


async def start_next(queue: TaskQueue, worker: str = "w1") -> StartedTask:
    """Claim and start the next queued task as a worker does."""
    (claim,) = await queue.claims.read_new(worker, 1, None)
    task = await queue.tasks.start(claim, worker=worker, now_ms=now_ms(), max_attempts=3)
    assert isinstance(task, StartedTask), task
    return task


async def dead_letter(
    queue: TaskQueue,
    context: str,
    tokens: tuple[str, ...] = (),
    code: ErrorCode = ErrorCode.LLM_CRASHED,
) -> str:
    """A task whose run wrote ``tokens`` and then failed with ``code`` (the queue's group must
    exist, and no other task be queued); returns its id."""
    task_id = await submit(queue, context, timeout_s=30)
    task = await start_next(queue)
    if tokens:
        await queue.tasks.append(task, 0, list(tokens), now_ms())
    await queue.tasks.fail(task, code, f"the LLM failed; see batch b-{task_id[:4]}")
    return task_id


async def holds(queue: TaskQueue, consumer: str, n: int) -> bool:
    """Whether ``consumer`` holds exactly ``n`` task entries."""
    rows = await queue.redis.xpending_range(queue.keys.tasks, WORKER_GROUP, "-", "+", 100)
    return sum(1 for r in rows if r["consumer"].decode() == consumer) == n


async def tokens_written(queue: TaskQueue, task_id: str) -> int:
    """Entries in the task's result stream: its tokens so far, while it runs."""
    return int(await queue.redis.xlen(queue.keys.result(task_id)))


def _is_terminal_id(entry_id: bytes | str) -> bool:
    return entry_id in (TERMINAL_ENTRY_ID, TERMINAL_ENTRY_ID.encode())


WHOLE_ANSWER = 10**9
"""A page size that takes a test's whole answer in one read."""


async def wait_result(queue: TaskQueue, task_id: str, timeout_s: float = 30) -> list[ResultEntry]:
    """Block on the task's result stream until its terminal entry; returns all entries."""
    key = queue.keys.result(task_id)
    last, deadline = "0-0", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await queue.redis.xread({key: last}, block=200)
        for _, entries in reply:
            last = entries[-1][0]
            if _is_terminal_id(last):
                return await queue.results.after(task_id, -1, count=WHOLE_ANSWER)
    raise AssertionError(f"task {task_id} did not finish within {timeout_s} s")


@dataclass(frozen=True, slots=True)
class Arrival:
    entry: ResultEntry
    at_s: float  # time.monotonic() when the test read it


async def read_as_they_come(queue: TaskQueue, task_id: str, timeout_s: float = 30) -> list[Arrival]:
    """Read a task's result stream entry by entry, noting when each one was seen: XREAD wakes
    the test as entries arrive, the queue reads them."""
    key = queue.keys.result(task_id)
    last_id, arrivals = "0-0", []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await queue.redis.xread({key: last_id}, block=100)
        seen = time.monotonic()
        if not reply:
            continue
        last_index = arrivals[-1].entry.index if arrivals else -1
        entries = await queue.results.after(task_id, last_index, count=WHOLE_ANSWER)
        arrivals += [Arrival(e, seen) for e in entries]
        last_id = arrivals[-1].entry.entry_id
        if arrivals[-1].entry.is_terminal:
            return arrivals
    raise AssertionError(f"task {task_id} did not finish within {timeout_s} s")


def answer(entries: list[ResultEntry]) -> str:
    return "".join(e.text for e in entries if e.kind == "token")


def terminal(entries: list[ResultEntry]) -> ResultEntry:
    assert entries and entries[-1].is_terminal, entries[-3:]
    return entries[-1]


def as_events(task_id: str, entries: list[ResultEntry]) -> list[Event]:
    """A result stream as the API streams it to a client who connects after it ended."""
    events = [task_event(task_id, -1, retry_ms=0)]
    for entry in entries:
        if entry.is_terminal and entry.kind == "error":
            data = entry.data or {}
            events.append(error_event(str(data.get("code")), str(data.get("message"))))
        elif entry.is_terminal:
            events.append(done_event(entry.data or {}))
        else:
            events.append(token_event(task_id, entry.index, entry.text))
    return events


def assert_complete_answer(entries: list[ResultEntry], expected: str) -> ResultEntry:
    """The answer is ``expected``, token ids run 0-1..0-n without gap or repeat, then `done`."""
    done = terminal(entries)
    assert done.kind == "done", done
    assert done.data is not None
    tokens = entries[:-1]
    assert [e.entry_id for e in tokens] == [token_entry_id(i) for i in range(len(tokens))]
    assert all(e.kind == "token" for e in tokens)
    verdict = check(as_events(done.data["task_id"], entries), expected_text=expected)
    assert verdict.ok, str(verdict)
    return done


def assert_error(entries: list[ResultEntry], code: str) -> dict[str, object]:
    """The task ended with error ``code``; returns the error's data."""
    end = terminal(entries)
    assert end.entry_id == TERMINAL_ENTRY_ID
    assert end.kind == "error", end
    assert end.data is not None
    assert end.data["code"] == code, end.data
    return end.data


# --- keys the API writes ------------------------------------------------------------------------


async def task_ids(redis: Redis, prefix: str) -> set[str]:
    """Every task hash under the prefix."""
    start = len(Keys(prefix).task(""))
    return {k.decode()[start:] async for k in redis.scan_iter(match=Keys(prefix).task("*"))}


async def queue_length(redis: Redis, prefix: str) -> int:
    """Entries in the task stream: tasks queued or running."""
    return int(await redis.xlen(Keys(prefix).tasks))


async def task_state(redis: Redis, prefix: str, task_id: str) -> tuple[str | None, str | None]:
    """The task's state and error code; None for what is missing or empty."""
    state, code = await redis.hmget(Keys(prefix).task(task_id), ["state", "code"])
    return _text(state), _text(code)


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        value = value.decode()
    return value or None


async def assert_nothing_queued(redis: Redis, prefix: str) -> None:
    assert await queue_length(redis, prefix) == 0
    assert await task_ids(redis, prefix) == set()
