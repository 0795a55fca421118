"""Wall-clock time as the task protocol stores it."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch: the unit of every timestamp in Redis and in `done` events."""
    return int(time.time() * 1000)
