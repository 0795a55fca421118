"""Waiting on a condition instead of sleeping: the one polling loop of the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10, what: str = ""
) -> None:
    """Wait until ``condition()`` is true, polling briefly; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


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
