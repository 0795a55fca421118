"""The mock's merged timeline of tokens, finishes and failures."""

from __future__ import annotations

import random

import pytest

from llm_batcher.mock.directives import FailMode
from llm_batcher.mock.schedule import (
    ContextPlan,
    Event,
    EventKind,
    build_timeline,
    context_events,
)
from llm_batcher.mock.tokens import tokenize
from tests.support.contexts import ALL_TEXTS

TOKEN, FINISH, FAIL = EventKind.TOKEN, EventKind.FINISH, EventKind.FAIL


def _plan(
    count: int,
    ttft_ms: int = 100,
    itl_ms: int = 10,
    fail: FailMode | None = None,
    fail_after: int = 0,
) -> ContextPlan:
    tokens = tuple(f"t{i} " for i in range(count))
    return ContextPlan(tokens, ttft_ms, itl_ms, fail=fail, fail_after=fail_after)


def _for_index(timeline: list[Event], index: int) -> list[Event]:
    return [event for event in timeline if event.index == index]


def test_single_context_timing() -> None:
    assert build_timeline([_plan(3)]) == [
        Event(100, TOKEN, 0, "t0 "),
        Event(110, TOKEN, 0, "t1 "),
        Event(120, TOKEN, 0, "t2 "),
        Event(120, FINISH, 0, "stop"),
    ]


def test_empty_answer_finishes_at_ttft() -> None:
    assert build_timeline([_plan(0, ttft_ms=250)]) == [Event(250, FINISH, 0, "stop")]


def test_empty_batch() -> None:
    assert build_timeline([]) == []


def test_contexts_run_concurrently() -> None:
    one = build_timeline([_plan(20, ttft_ms=0, itl_ms=50)])
    four = build_timeline([_plan(20, ttft_ms=0, itl_ms=50) for _ in range(4)])
    assert four[-1].t_ms == one[-1].t_ms == 19 * 50
    assert len(four) == 4 * len(one)


def test_merge_orders_by_time_then_index() -> None:
    timeline = build_timeline([_plan(2, ttft_ms=30, itl_ms=20), _plan(2, ttft_ms=10, itl_ms=20)])
    assert [(e.t_ms, e.kind, e.index) for e in timeline] == [
        (10, TOKEN, 1),
        (30, TOKEN, 0),
        (30, TOKEN, 1),
        (30, FINISH, 1),
        (50, TOKEN, 0),
        (50, FINISH, 0),
    ]


def test_zero_delays_give_index_order() -> None:
    timeline = build_timeline([_plan(3, 0, 0), _plan(3, 0, 0), _plan(3, 0, 0)])
    assert [e.index for e in timeline] == [0] * 4 + [1] * 4 + [2] * 4
    assert [e.kind for e in timeline[:4]] == [TOKEN, TOKEN, TOKEN, FINISH]


@pytest.mark.parametrize("mode", [FailMode.EXIT, FailMode.HANG])
def test_stopping_failure_replaces_the_rest(mode: FailMode) -> None:
    timeline = build_timeline([_plan(5, fail=mode, fail_after=2), _plan(1, ttft_ms=500)])
    assert _for_index(timeline, 0) == [
        Event(100, TOKEN, 0, "t0 "),
        Event(110, TOKEN, 0, "t1 "),
        Event(120, FAIL, 0, mode.value),
    ]
    assert [e.kind for e in _for_index(timeline, 1)] == [TOKEN, FINISH]


def test_failure_after_zero_tokens_is_at_ttft() -> None:
    assert build_timeline([_plan(3, fail=FailMode.EXIT)]) == [Event(100, FAIL, 0, "exit")]


def test_garbage_slips_in_and_the_context_carries_on() -> None:
    events = build_timeline([_plan(3, fail=FailMode.GARBAGE, fail_after=1)])
    assert events == [
        Event(100, TOKEN, 0, "t0 "),
        Event(110, FAIL, 0, "garbage"),
        Event(110, TOKEN, 0, "t1 "),
        Event(120, TOKEN, 0, "t2 "),
        Event(120, FINISH, 0, "stop"),
    ]


@pytest.mark.parametrize("mode", list(FailMode))
def test_failure_after_all_tokens_comes_after_finish(mode: FailMode) -> None:
    events = context_events(0, _plan(2, fail=mode, fail_after=5))
    assert [(e.t_ms, e.kind) for e in events] == [
        (100, TOKEN),
        (110, TOKEN),
        (110, FINISH),
        (150, FAIL),
    ]


def test_failure_of_one_context_does_not_move_others() -> None:
    plans = [_plan(4, ttft_ms=0, itl_ms=0, fail=FailMode.EXIT, fail_after=2), _plan(2, 0, 0)]
    timeline = build_timeline(plans)
    assert [(e.index, e.kind) for e in timeline] == [
        (0, TOKEN),
        (0, TOKEN),
        (0, FAIL),
        (1, TOKEN),
        (1, TOKEN),
        (1, FINISH),
    ]


@pytest.mark.parametrize("text", ALL_TEXTS.values(), ids=ALL_TEXTS.keys())
def test_hostile_tokens_pass_through_unchanged(text: str) -> None:
    plans = [ContextPlan(tuple(tokenize(text)), 5, 1), ContextPlan(("other",), 0, 0)]
    timeline = build_timeline(plans)
    tokens = [e.payload for e in timeline if e.index == 0 and e.kind is TOKEN]
    assert "".join(tokens) == text
    assert timeline[-1] == Event(5 + max(len(tokens) - 1, 0), FINISH, 0, "stop")


def test_random_batches_keep_order_and_content() -> None:
    rng = random.Random(7)
    for _ in range(200):
        plans = [
            ContextPlan(
                tuple(str(i) for i in range(rng.randint(0, 6))),
                ttft_ms=rng.randint(0, 30),
                itl_ms=rng.randint(0, 10),
                fail=rng.choice([None, *FailMode]),
                fail_after=rng.randint(0, 7),
            )
            for _ in range(rng.randint(1, 5))
        ]
        timeline = build_timeline(plans)
        assert timeline == sorted(timeline, key=lambda e: (e.t_ms, e.index))
        for index, plan in enumerate(plans):
            assert _for_index(timeline, index) == context_events(index, plan)
