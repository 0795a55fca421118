"""Whether a new batch waits its window for batch-mates (LLMB_WINDOW_POLICY).

`fixed` always waits up to `LLMB_WINDOW_MS` after the first task for more. `adaptive` waits only
when a batch-mate is likely within the window, judged from what happened after recent batches
formed: for each, whether another task arrived within the window after it formed (so waiting
would have paid, or did). Arrival times are the millisecond timestamps in the task stream's
entry ids, so they cost no Redis call. When waiting paid for at least half of the recent
batches, the batch waits; otherwise, as at low load, it starts at once and saves the window.
A batch whose first task has already waited a window for a worker waits too, as with `fixed`:
the worker is the bottleneck then, and filling its batch matters more than the window.

Why outcomes and not a rate: arrivals are rarely independent. Closed-loop clients (that send
their next request when an answer ends) resubmit together when a batch ends; a batch formed at
that moment sees its mates arrive milliseconds later, although the average rate says a mate
within the window is unlikely. At saturation a batch fills from the queue in one read whatever
the policy.

Pure and without I/O. A worker sees only the tasks it claims, which at low load with several
workers hides some arrivals, and that errs towards starting at once exactly where waiting
rarely pays.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence

HISTORY_SIZE = 16  # batch formations remembered
ARRIVALS_SIZE = 4 * HISTORY_SIZE  # arrivals remembered
MIN_OUTCOMES = 4  # with fewer batches to judge from, wait as the fixed policy does


def arrival_ms(entry_id: str) -> int:
    """Arrival time of a task: the millisecond part of its task-stream entry id."""
    return int(entry_id.split("-", 1)[0])


def mate_likely(paid: Sequence[bool]) -> bool:
    """Whether the batch forming now should wait, given for recent batches whether a mate
    arrived within the window after they formed: yes if it did for at least half of them, and
    while fewer than MIN_OUTCOMES are known."""
    if len(paid) < MIN_OUTCOMES:
        return True
    return 2 * sum(paid) >= len(paid)


def should_wait(paid: Sequence[bool], first_waited_ms: int, window_ms: int) -> bool:
    """The adaptive policy: wait the window when the batch's first task has already waited at
    least that long for a worker (``first_waited_ms``), or when a mate is likely."""
    return first_waited_ms >= window_ms or mate_likely(paid)


class ArrivalHistory:
    """When this worker's recent batches formed, and when the tasks it claimed arrived."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self._formed: deque[int] = deque(maxlen=size)
        self._arrivals: deque[int] = deque(maxlen=4 * size)

    def add(self, arrivals_ms: Iterable[int]) -> None:
        """Record arrivals (of newly read tasks only: a taken-over one arrived long ago)."""
        self._arrivals.extend(arrivals_ms)

    def formed(self, at_ms: int) -> None:
        """Record that a batch formed (its first tasks in hand, the window not yet waited)."""
        self._formed.append(at_ms)

    def paid(self, window_ms: int) -> list[bool]:
        """For each recorded formation, whether a task arrived within the window after it."""
        arrivals = sorted(self._arrivals)
        outcomes = []
        for formed_ms in self._formed:
            first_after = bisect_right(arrivals, formed_ms)
            outcomes.append(
                first_after < len(arrivals) and arrivals[first_after] <= formed_ms + window_ms
            )
        return outcomes
