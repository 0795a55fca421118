"""The supervisor of `llm-batcher up` (and of the bench's stacks): a child that keeps dying at
once is restarted ever more slowly; one that had been running well is restarted at the first
pace, however often it died before."""

from __future__ import annotations

import asyncio
import os
import re

from llm_batcher.local.supervisor import FIRST_BACKOFF_S, ChildSpec, Supervised
from tests.support.waiting import eventually


async def pauses(argv: list[str], stable_s: float, restarts: int) -> list[float]:
    """The pauses the supervisor announces before the first ``restarts`` restarts of ``argv``."""
    lines: list[str] = []
    child = Supervised(ChildSpec("child", argv, dict(os.environ), stable_s=stable_s), lines.append)
    runner = asyncio.create_task(child.run())
    try:
        await eventually(lambda: child.restarts >= restarts, 30, f"{restarts} restarts")
    finally:
        await child.stop()
        await runner
    found = [re.search(r"restart in ([0-9.]+) s", line) for line in lines]
    return [float(m.group(1)) for m in found if m][:restarts]


async def test_a_child_that_dies_at_once_waits_longer_each_time() -> None:
    # it cannot have run 30 s: every death is a quick one
    assert await pauses(["true"], stable_s=30, restarts=3) == [0.5, 1.0, 2.0]


async def test_a_child_that_ran_well_is_restarted_at_the_first_pace() -> None:
    # it runs 0.3 s at least, more than stable_s: no death counts as quick
    pace = await pauses(["sleep", "0.3"], stable_s=0.2, restarts=3)
    assert pace == [FIRST_BACKOFF_S] * 3
