"""When this API process last heard from Redis, whichever of its calls or messages it was."""

from __future__ import annotations

import time


class RedisLiveness:
    """The last sign of life from Redis: an answer to any call, or a pub/sub message.

    A request that waits long for its own call is no sign that Redis is down while other calls
    get answers: in a burst they queue for a pool connection. Only a Redis silent to everyone
    for a whole timeout is taken for down (outage.redis_call).
    """

    def __init__(self) -> None:
        self._at = float("-inf")

    def answered(self) -> None:
        """Record a sign of life, now."""
        self._at = time.monotonic()

    def silent_for_s(self) -> float:
        """Seconds since the last sign of life (infinite before the first)."""
        return time.monotonic() - self._at
