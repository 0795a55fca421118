"""The closed loop's shared budget of requests: every request taken once, pauses cut short."""

from __future__ import annotations

import asyncio

from llm_batcher.bench.load import Budget


def test_the_budget_gives_each_request_once() -> None:
    budget = Budget(3)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert budget.spent.is_set()


async def test_a_pause_ends_once_every_request_is_taken() -> None:
    budget = Budget(1)
    pausing = asyncio.create_task(budget.pause(3600))
    assert budget.take()
    await asyncio.sleep(0)
    assert not pausing.done()  # one was left: the pause goes on
    assert not budget.take()
    await asyncio.wait_for(pausing, 10)  # an hour's pause, ended by the spent budget
