"""Background tasks that fail loudly.

A long-lived task (the API's pub/sub reader and queue gauges, the worker's heartbeat) runs under
`keep_running`: when it raises, the traceback is logged at once, the crash is counted in
`llm_batcher_background_task_crashes_total{task}`, and the task starts again after a short delay,
instead of dying silently until shutdown. A one-shot task that outlives the request that started
it (`spawn`) is kept referenced until it ends, and its failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from llm_batcher import metrics

log = logging.getLogger(__name__)

RESTART_DELAY_S = 0.5


def keep_running(
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    *,
    restart_delay_s: float = RESTART_DELAY_S,
) -> asyncio.Task[None]:
    """Start ``run()`` as a task that is restarted whenever it raises or returns.

    Cancelling the returned task stops it for good (cancellation is never swallowed).
    """
    return asyncio.get_running_loop().create_task(_forever(name, run, restart_delay_s), name=name)


async def _forever(
    name: str, run: Callable[[], Coroutine[Any, Any, None]], restart_delay_s: float
) -> None:
    while True:
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except Exception:
            log.exception("background task %s crashed; restarting it", name)
        metrics.BACKGROUND_TASK_CRASHES.labels(name).inc()
        await asyncio.sleep(restart_delay_s)


_spawned: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], what: str) -> None:
    """Run a coroutine beyond the request that started it; its failure is logged, never lost."""
    task = asyncio.get_running_loop().create_task(coro)
    _spawned.add(task)

    def _done(t: asyncio.Task[Any]) -> None:
        _spawned.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("background %s failed: %s", what, t.exception())

    task.add_done_callback(_done)
