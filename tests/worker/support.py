"""Helpers shared by the worker tests: running workers, reading answers as they arrive."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, token_entry_id
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.results import ResultEntry
from tests.helpers import Proc, answer, start_worker, terminal


@contextlib.asynccontextmanager
async def running_worker(
    redis_url: str, prefix: str, log_dir: Path, **settings: object
) -> AsyncIterator[tuple[Proc, int]]:
    """A worker process for the duration of the block (stopped, or already gone, after it)."""
    proc, port = await start_worker(redis_url, prefix, log_dir, **settings)
    try:
        yield proc, port
    finally:
        proc.stop()


@dataclass(frozen=True, slots=True)
class Arrival:
    entry: ResultEntry
    at_s: float  # time.monotonic() when the test read it


async def read_as_they_come(queue: TaskQueue, task_id: str, timeout_s: float = 30) -> list[Arrival]:
    """Read a task's result stream entry by entry, noting when each one was seen."""
    key = queue.keys.result(task_id)
    last, arrivals = "0-0", []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await queue.redis.xread({key: last}, block=100)
        seen = time.monotonic()
        for _, entries in reply:
            for raw_id, fields in entries:
                last = raw_id.decode()
                arrivals.append(Arrival(ResultEntry.from_fields(last, fields), seen))
        if arrivals and arrivals[-1].entry.is_terminal:
            return arrivals
    raise AssertionError(f"task {task_id} did not finish within {timeout_s} s")


def assert_complete_answer(entries: list[ResultEntry], expected: str) -> ResultEntry:
    """The answer is ``expected``, token ids run 0-1..0-n without gap or repeat, then `done`."""
    done = terminal(entries)
    assert done.kind == "done", done
    tokens = entries[:-1]
    assert [e.entry_id for e in tokens] == [token_entry_id(i) for i in range(len(tokens))]
    assert all(e.kind == "token" for e in tokens)
    assert answer(entries) == expected
    assert done.data is not None
    assert done.data["text"] == expected
    assert done.data["tokens"] == len(tokens)
    return done


def assert_error(entries: list[ResultEntry], code: str) -> dict[str, object]:
    """The task ended with error ``code``; returns the error's data."""
    end = terminal(entries)
    assert end.entry_id == TERMINAL_ENTRY_ID
    assert end.kind == "error", end
    assert end.data is not None
    assert end.data["code"] == code, end.data
    return end.data


def mock_tokens(body: str) -> list[str]:
    """The tokens the mock echoes for a context body."""
    return tokenize(body)


def llm_children(pid: int) -> list[psutil.Process]:
    """Live `llm-mock` processes started by process ``pid``."""
    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(
                "llm-mock" in part for part in child.cmdline()
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def batch_dirs(root: Path) -> list[Path]:
    """Per-batch context folders left in ``root``."""
    return sorted(root.glob("llmb-batch-*"))
