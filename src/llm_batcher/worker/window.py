"""Whether a new batch waits its window for batch-mates (LLMB_WINDOW_POLICY).

`fixed` always waits up to `LLMB_WINDOW_MS` after the first task for more. `adaptive` waits only
when a batch-mate is likely within the window, judged from the deployment's recent arrivals: of
the tasks that arrived within the horizon, the share that another task followed within one
window. That share is the chance that waiting pays, measured rather than modelled: at a steady
rate λ it is 1 - exp(-λ·window), and closed-loop clients, which send their next request when an
answer ends and so arrive together, raise it to what they really do. When at least half of the
recent arrivals had a follower, the batch waits; when fewer did, as at low load, it starts at
once and saves the window. When nothing arrived within the horizon, the deployment was idle and
nothing says what comes next: the batch waits IDLE_GRACE_MS (at most the window), enough for the
rest of a burst that arrives over a few milliseconds, little for a lone request. A batch whose
first task has already waited a window for a worker waits too, as with `fixed`: the worker is
the bottleneck then, and filling its batch matters more than the window. At saturation a batch
fills from the queue in one read whatever the policy.

The horizon is HORIZON_WINDOWS windows, or two recent batch durations when that is longer:
closed-loop clients come back about once a batch, so with a slow model their last return is
older than any fixed number of windows, and must still count.

The arrivals are every API's submissions (keys.arrivals, written by the submit script), not only
the tasks this worker claimed: with several workers, a worker that judged from its own claims
would not see the mates it failed to wait for, which went to another worker, and would stop
waiting exactly where waiting fills batches. Times are Redis's own (the millisecond part of
task-stream entry ids), compared only with each other, so no clock needs to agree with Redis's.

Pure and without I/O: the worker reads the arrivals and asks here.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

HORIZON_WINDOWS = 20
"""Arrivals older than this many windows (or two batch durations) before the batch's first task
are not evidence."""

MIN_SHARE = 0.5
"""Wait when at least this share of recent arrivals had a follower within the window."""

IDLE_GRACE_MS = 5
"""How long the first batch after an idle spell waits for more (at most the window)."""


def arrival_ms(entry_id: str) -> int:
    """Arrival time of a task: the millisecond part of its task-stream entry id."""
    return int(entry_id.split("-", 1)[0])


def horizon_ms(window_ms: int, batch_ms: float | None) -> int:
    """How far back arrivals are evidence: HORIZON_WINDOWS windows, or two batch durations."""
    return max(HORIZON_WINDOWS * window_ms, int(2 * (batch_ms or 0)))


def follower_share(
    arrivals_ms: Iterable[int], first_ms: int, window_ms: int, batch_ms: float | None = None
) -> float | None:
    """Of the arrivals before ``first_ms`` (the arrival of the batch's first task) and within
    the horizon (``batch_ms``: recent batch duration), whose window has passed by then, the
    share that another arrival followed within the window; None when there is none to judge.

    An arrival whose window reaches ``first_ms`` is left out: what followed it is not all known.
    """
    times = sorted(t for t in arrivals_ms if t <= first_ms)
    lo = bisect_left(times, first_ms - horizon_ms(window_ms, batch_ms))
    hi = bisect_right(times, first_ms - window_ms)
    if lo >= hi:
        return None
    followed = sum(
        1 for i in range(lo, hi) if i + 1 < len(times) and times[i + 1] <= times[i] + window_ms
    )
    return followed / (hi - lo)


def wait_ms(
    arrivals_ms: Iterable[int],
    first_ms: int,
    first_waited_ms: int,
    window_ms: int,
    batch_ms: float | None = None,
) -> int:
    """The adaptive policy: how long the batch forming now waits for more tasks. The whole
    window when its first task has already waited at least that long for a worker
    (``first_waited_ms``), or when a mate is likely; IDLE_GRACE_MS after an idle spell; else 0."""
    if first_waited_ms >= window_ms:
        return window_ms
    share = follower_share(arrivals_ms, first_ms, window_ms, batch_ms)
    if share is None:
        return min(IDLE_GRACE_MS, window_ms)
    return window_ms if share >= MIN_SHARE else 0
