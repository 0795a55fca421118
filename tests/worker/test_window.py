"""The adaptive window's decision (worker/window.py): pure, so tested without Redis or timing."""

from __future__ import annotations

import pytest

from llm_batcher.worker.window import (
    HISTORY_SIZE,
    MIN_OUTCOMES,
    ArrivalHistory,
    arrival_ms,
    mate_likely,
    should_wait,
)

WINDOW_MS = 50
BATCH_MS = 500


def replay(arrivals: list[int], formations: list[int]) -> list[bool]:
    history = ArrivalHistory()
    history.add(arrivals)
    for at_ms in formations:
        history.formed(at_ms)
    return history.paid(WINDOW_MS)


def test_arrival_time_is_the_entry_ids_milliseconds() -> None:
    assert arrival_ms("1732870000123-0") == 1732870000123
    assert arrival_ms("1732870000123-7") == 1732870000123


def test_without_enough_history_the_batch_waits_as_the_fixed_policy_does() -> None:
    assert mate_likely([])
    assert mate_likely([False] * (MIN_OUTCOMES - 1))
    assert not mate_likely([False] * MIN_OUTCOMES)


@pytest.mark.parametrize(
    ("paid", "waits"),
    [([True, True, False, False], True), ([True, False, False, False, False], False)],
)
def test_half_the_recent_batches_paid_is_enough(paid: list[bool], waits: bool) -> None:
    assert mate_likely(paid) is waits


def test_one_client_at_a_time_starts_at_once() -> None:
    # a request arrives a few ms after each answer ends, and nothing else comes meanwhile
    arrivals = [i * (BATCH_MS + 5) for i in range(10)]
    formations = [a + 1 for a in arrivals]
    paid = replay(arrivals, formations)
    assert paid == [False] * 10
    assert not should_wait(paid, first_waited_ms=1, window_ms=WINDOW_MS)


def test_closed_loop_bursts_wait_for_the_rest_of_the_burst() -> None:
    # four clients resubmit within a few ms of each other when their batch ends; the average
    # rate (8/s) alone would call a mate within 50 ms unlikely
    arrivals = [b * BATCH_MS + k * 3 for b in range(6) for k in range(4)]
    formations = [b * BATCH_MS + 1 for b in range(6)]  # formed at the first of each burst
    paid = replay(arrivals, formations)
    assert all(paid)
    assert should_wait(paid, first_waited_ms=1, window_ms=WINDOW_MS)


def test_an_arrival_outside_the_window_or_before_the_batch_formed_did_not_pay() -> None:
    assert replay([100, 151], [100]) == [False]  # 51 ms after: outside a 50 ms window
    assert replay([100, 150], [100]) == [True]  # at the window's end: inside
    assert replay([90, 100], [100]) == [False]  # before it formed: it was in the batch


def test_a_first_task_that_already_waited_a_window_for_a_worker_waits_for_mates() -> None:
    never_paid = [False] * HISTORY_SIZE
    assert not should_wait(never_paid, first_waited_ms=WINDOW_MS - 1, window_ms=WINDOW_MS)
    assert should_wait(never_paid, first_waited_ms=WINDOW_MS, window_ms=WINDOW_MS)


def test_the_decision_follows_a_change_of_load() -> None:
    history = ArrivalHistory()
    history.add(b * BATCH_MS + k * 3 for b in range(4) for k in range(4))
    for b in range(4):
        history.formed(b * BATCH_MS + 1)
    assert mate_likely(history.paid(WINDOW_MS))
    lone = [10_000 + i * 700 for i in range(HISTORY_SIZE)]  # the load drops to one client
    history.add(lone)
    for at_ms in lone:
        history.formed(at_ms + 1)
    paid = history.paid(WINDOW_MS)
    assert len(paid) == HISTORY_SIZE  # only the latest formations are remembered
    assert not mate_likely(paid)
