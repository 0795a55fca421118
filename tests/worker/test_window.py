"""The adaptive window's decision (worker/window.py): pure, so tested without Redis or timing."""

from __future__ import annotations

import math
import random

import pytest

from llm_batcher.worker.window import (
    HORIZON_WINDOWS,
    IDLE_GRACE_MS,
    arrival_ms,
    follower_share,
    wait_ms,
)

WINDOW_MS = 50
BATCH_MS = 500


def test_arrival_time_is_the_entry_ids_milliseconds() -> None:
    assert arrival_ms("1732870000123-0") == 1732870000123
    assert arrival_ms("1732870000123-7") == 1732870000123


def test_one_client_at_a_time_starts_at_once() -> None:
    # a request arrives a few ms after each answer ends, and nothing else comes meanwhile
    arrivals = [i * (BATCH_MS + 5) for i in range(10)]
    first = arrivals[-1]
    assert follower_share(arrivals, first, WINDOW_MS) == 0.0
    assert wait_ms(arrivals, first, first_waited_ms=1, window_ms=WINDOW_MS) == 0


def test_after_an_idle_spell_it_waits_a_short_grace_for_the_rest_of_a_burst() -> None:
    assert follower_share([], 1000, WINDOW_MS) is None
    assert wait_ms([], 1000, first_waited_ms=0, window_ms=WINDOW_MS) == IDLE_GRACE_MS
    old = [0, 1, 2, 3]  # a burst, but longer ago than the horizon
    first = 3 + HORIZON_WINDOWS * WINDOW_MS + 1
    assert follower_share(old, first, WINDOW_MS) is None
    assert wait_ms(old, first, first_waited_ms=0, window_ms=WINDOW_MS) == IDLE_GRACE_MS
    assert IDLE_GRACE_MS < WINDOW_MS
    assert wait_ms([], 1000, first_waited_ms=0, window_ms=2) == 2  # never beyond the window


def test_closed_loop_bursts_wait_for_the_rest_of_the_burst() -> None:
    # two workers, four clients each: four requests arrive within a few ms when a batch ends,
    # every 250 ms; the average rate (16/s) alone would put a mate within 50 ms at 55%
    arrivals = [b * BATCH_MS // 2 + k for b in range(8) for k in range(4)]
    first = 8 * BATCH_MS // 2
    assert follower_share(arrivals, first, WINDOW_MS) == pytest.approx(0.75)
    assert wait_ms(arrivals, first, first_waited_ms=0, window_ms=WINDOW_MS) == WINDOW_MS


def test_arrivals_in_the_same_millisecond_follow_each_other() -> None:
    assert follower_share([100, 100, 100], 1000, WINDOW_MS) == pytest.approx(2 / 3)


def test_an_arrival_follows_within_the_window_or_not_at_all() -> None:
    assert follower_share([100, 151], 1000, WINDOW_MS) == 0.0  # 51 ms later: outside
    assert follower_share([100, 150], 1000, WINDOW_MS) == 0.5  # at the window's end: inside
    # the batch's own first task counts as a follower of what came just before it
    assert follower_share([100, 140], 140 + 10, WINDOW_MS) == 1.0


def test_arrivals_whose_window_is_still_open_are_not_judged() -> None:
    # at 120, the arrival at 100 may still get a follower before 150: not evidence yet
    assert follower_share([0, 100], 120, WINDOW_MS) == 0.0
    assert follower_share([100], 120, WINDOW_MS) is None


def test_arrivals_after_the_batchs_first_task_are_not_history() -> None:
    # the batch's mates that arrive while it forms say nothing about before it
    assert follower_share([0, 500, 501, 502], 500, WINDOW_MS) == 0.0


def test_a_first_task_that_already_waited_a_window_for_a_worker_waits_for_mates() -> None:
    lonely = [i * BATCH_MS for i in range(5)]
    first = 5 * BATCH_MS
    assert wait_ms(lonely, first, first_waited_ms=WINDOW_MS - 1, window_ms=WINDOW_MS) == 0
    assert wait_ms(lonely, first, first_waited_ms=WINDOW_MS, window_ms=WINDOW_MS) == WINDOW_MS


def test_with_a_slow_model_the_last_return_of_closed_loop_clients_still_counts() -> None:
    # batches of 5 s: four clients come back together every 5 s, long before 20 windows ago
    batch_ms = 5000
    arrivals = [b * batch_ms + k for b in range(3) for k in range(4)]
    first = 3 * batch_ms
    assert follower_share(arrivals, first, WINDOW_MS) is None  # a horizon of windows alone
    assert (
        wait_ms(arrivals, first, first_waited_ms=0, window_ms=WINDOW_MS, batch_ms=batch_ms)
        == WINDOW_MS
    )


def test_the_decision_follows_a_change_of_load() -> None:
    bursts = [b * BATCH_MS + k for b in range(4) for k in range(4)]
    assert wait_ms(bursts, 4 * BATCH_MS, first_waited_ms=0, window_ms=WINDOW_MS) == WINDOW_MS
    # then one client alone: once the bursts are older than the horizon, batches start at once
    lone = [4 * BATCH_MS + i * (BATCH_MS + 5) for i in range(4)]
    first = lone[-1] + BATCH_MS + 5
    assert first - bursts[-1] > HORIZON_WINDOWS * WINDOW_MS
    assert wait_ms(bursts + lone, first, first_waited_ms=0, window_ms=WINDOW_MS) == 0


@pytest.mark.parametrize(("rate_per_s", "waits"), [(2.0, False), (5.0, False), (40.0, True)])
def test_at_a_steady_random_rate_it_waits_when_a_mate_is_likely(
    rate_per_s: float, waits: bool
) -> None:
    # at rate λ, a mate comes within the window w with chance 1 - exp(-λw): above one half from
    # λ = 13.9/s for w = 50 ms; the decisions, taken at each arrival, should mostly agree
    rng = random.Random(7)
    arrivals, t = [], 0.0
    while len(arrivals) < 2000:
        t += rng.expovariate(rate_per_s / 1000)
        arrivals.append(int(t))
    decisions = [
        wait_ms(arrivals[:i], first, first_waited_ms=0, window_ms=WINDOW_MS) == WINDOW_MS
        for i, first in enumerate(arrivals)
        if i >= 100
    ]
    chance = 1 - math.exp(-rate_per_s * WINDOW_MS / 1000)
    assert (chance >= 0.5) is waits
    assert sum(decisions) / len(decisions) == (
        pytest.approx(1.0, abs=0.2) if waits else pytest.approx(0.0, abs=0.2)
    )
