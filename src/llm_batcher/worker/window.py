"""Whether a new batch waits its window for batch-mates (LLMB_WINDOW_POLICY).

`fixed` always waits up to `LLMB_WINDOW_MS` after the first task for more. `adaptive` waits only
when a batch-mate is likely within the window, judged from the gaps between recent arrivals:
the arrival times are the millisecond timestamps in the task stream's entry ids, so they cost no
Redis call. When at least half of the recent gaps were no longer than the window, arrivals come
in bursts or fast enough for a mate to come, and the batch waits; when most gaps were longer, as
at low load, it starts at once and saves the window. At saturation a batch fills from the queue
in one read whatever the policy; under closed-loop bursts (clients that resubmit when their
answers end) the gaps within a burst are short, so the batch waits for the rest of the burst.

Pure and without I/O; `ArrivalHistory` is per worker: it sees the arrivals this worker claims,
which at low load with several workers makes the gaps look longer, and that errs towards
starting at once exactly where waiting rarely pays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import pairwise

HISTORY_SIZE = 16  # arrivals remembered
MIN_GAPS = 4  # with fewer gaps known, wait as the fixed policy does


def arrival_ms(entry_id: str) -> int:
    """Arrival time of a task: the millisecond part of its task-stream entry id."""
    return int(entry_id.split("-", 1)[0])


def mate_likely(gaps_ms: Sequence[int], window_ms: int) -> bool:
    """Whether another task is likely to arrive within ``window_ms`` of one that just came.

    True when at least half of the recent inter-arrival gaps were at most the window, and when
    fewer than MIN_GAPS gaps are known.
    """
    if len(gaps_ms) < MIN_GAPS:
        return True
    near = sum(1 for gap in gaps_ms if gap <= window_ms)
    return 2 * near >= len(gaps_ms)


class ArrivalHistory:
    """The arrival times of the last HISTORY_SIZE tasks this worker claimed."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self._arrivals: deque[int] = deque(maxlen=size)

    def add(self, arrivals_ms: Iterable[int]) -> None:
        """Record arrivals (newly read tasks only: a taken-over task arrived long ago)."""
        self._arrivals.extend(arrivals_ms)

    def gaps_ms(self) -> list[int]:
        """Gaps between consecutive recorded arrivals, in arrival order."""
        times = sorted(self._arrivals)
        return [later - earlier for earlier, later in pairwise(times)]
