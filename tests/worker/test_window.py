"""The adaptive window's decision (worker/window.py): pure, so tested without Redis or timing."""

from __future__ import annotations

import pytest

from llm_batcher.worker.window import (
    HISTORY_SIZE,
    MIN_GAPS,
    ArrivalHistory,
    arrival_ms,
    mate_likely,
)

WINDOW_MS = 50


def gaps_of(arrivals: list[int]) -> list[int]:
    history = ArrivalHistory()
    history.add(arrivals)
    return history.gaps_ms()


def test_arrival_time_is_the_entry_ids_milliseconds() -> None:
    assert arrival_ms("1732870000123-0") == 1732870000123
    assert arrival_ms("1732870000123-7") == 1732870000123


def test_without_enough_history_the_batch_waits_as_the_fixed_policy_does() -> None:
    assert mate_likely([], WINDOW_MS)
    assert mate_likely([10_000] * (MIN_GAPS - 1), WINDOW_MS)


def test_sparse_arrivals_start_at_once() -> None:
    # one client at a time: a request every ~550 ms, far apart compared with the window
    arrivals = [i * 550 for i in range(10)]
    assert not mate_likely(gaps_of(arrivals), WINDOW_MS)


def test_bursts_wait_for_the_rest_of_the_burst() -> None:
    # closed-loop clients resubmit together when their batch ends: 4 within a few ms, every 550
    arrivals = [burst * 550 + k * 3 for burst in range(4) for k in range(4)]
    assert mate_likely(gaps_of(arrivals), WINDOW_MS)


def test_a_steady_rate_waits_when_arrivals_come_within_the_window() -> None:
    fast = [i * 20 for i in range(12)]  # 50 requests/s, every gap inside a 50 ms window
    slow = [i * 80 for i in range(12)]  # 12.5 requests/s, every gap outside it
    assert mate_likely(gaps_of(fast), WINDOW_MS)
    assert not mate_likely(gaps_of(slow), WINDOW_MS)


@pytest.mark.parametrize(("near", "far", "waits"), [(2, 2, True), (2, 3, False), (3, 2, True)])
def test_half_the_gaps_within_the_window_is_enough(near: int, far: int, waits: bool) -> None:
    assert mate_likely([5] * near + [500] * far, WINDOW_MS) is waits


def test_a_gap_equal_to_the_window_counts_as_within() -> None:
    assert mate_likely([WINDOW_MS] * MIN_GAPS, WINDOW_MS)
    assert not mate_likely([WINDOW_MS + 1] * MIN_GAPS, WINDOW_MS)


def test_history_keeps_the_latest_arrivals_in_arrival_order() -> None:
    history = ArrivalHistory()
    history.add([300, 100, 200])  # read out of order (two reads, or a slow reader)
    assert history.gaps_ms() == [100, 100]
    history.add(range(1000, 1000 + 10 * HISTORY_SIZE, 10))
    gaps = history.gaps_ms()
    assert len(gaps) == HISTORY_SIZE - 1
    assert set(gaps) == {10}  # the early arrivals were forgotten


def test_the_decision_follows_a_change_of_load() -> None:
    history = ArrivalHistory()
    history.add(burst * 550 + k * 3 for burst in range(4) for k in range(4))
    assert mate_likely(history.gaps_ms(), WINDOW_MS)
    history.add(3000 + i * 700 for i in range(HISTORY_SIZE))  # the load drops to one client
    assert not mate_likely(history.gaps_ms(), WINDOW_MS)
