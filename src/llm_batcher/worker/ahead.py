"""Reading ahead: near the end of its running batch, a worker claims the next one, so that the
next batch starts the moment this one ends instead of after a round of Redis calls.

Near the end means once a task of the batch has finished (its contexts run together, so the
rest follow soon), or LEAD_S before the batch's predicted end (a moving average of recent batch
durations), whichever comes first.

Tasks read ahead wait for this batch to end, which is right only if no other worker could start
them now. So a busy worker reads ahead only while no other worker is idle (keys.idle: workers
mark themselves there while they wait for tasks, and from the moment their batch's last answers
begin to be written, before those clients can send more; they leave it when they start a batch),
and the check and the taking of the read turn are one step (the AHEAD_TURN script). It holds the
turn for one read that does not block, so an idle worker that appears meanwhile gets the turn
back at once; and it stops reading when the batch ends or the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from llm_batcher.clock import now_ms
from llm_batcher.protocol.claims import Claim, Claims
from llm_batcher.settings import WorkerSettings

log = logging.getLogger(__name__)

LEAD_S = 0.05  # read ahead from this long before a batch's predicted end
POLL_S = 0.02  # how often to try again while the batch runs
EWMA_WEIGHT = 0.2  # weight of the latest batch in the average batch duration


class ReadAhead:
    """Claims one worker's next batch while its current one ends."""

    def __init__(
        self,
        claims: Claims,
        settings: WorkerSettings,
        turn_ms: int,
        took: Callable[[list[Claim]], None],
    ) -> None:
        self.claims = claims
        self.worker = settings.worker_id
        self.max_batch = settings.max_batch
        self.turn_ms = turn_ms
        self.took = took  # called with each claim read ahead, to hold it
        self.batch_s: float | None = None  # moving average of batch durations

    def batch_ended(self, duration_s: float) -> None:
        """Update the moving average of batch durations, which predicts the next end."""
        if self.batch_s is None:
            self.batch_s = duration_s
        else:
            self.batch_s += EWMA_WEIGHT * (duration_s - self.batch_s)

    async def run(
        self, batch: asyncio.Task[None], tail: asyncio.Event, stop: asyncio.Event
    ) -> list[Claim]:
        """Claims for the next batch, read near the end of ``batch`` (``tail``: a task of it is
        complete); on a Redis error, those read so far."""
        await self._until_tail(batch, tail)
        claims: list[Claim] = []
        try:
            while not batch.done() and not stop.is_set() and len(claims) < self.max_batch:
                claims += await self._read_once(self.max_batch - len(claims))
                await asyncio.wait({batch}, timeout=POLL_S)
        except (RedisError, OSError) as exc:
            log.warning("reading ahead failed (%s); the next batch waits for this one", exc)
        if claims:
            log.debug("read %d task(s) ahead", len(claims))
        return claims

    async def _until_tail(self, batch: asyncio.Task[None], tail: asyncio.Event) -> None:
        lead_s = None if self.batch_s is None else max(0.0, self.batch_s - LEAD_S)
        tail_seen = asyncio.create_task(tail.wait())
        try:
            await asyncio.wait(
                {batch, tail_seen}, timeout=lead_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            tail_seen.cancel()

    async def _read_once(self, count: int) -> list[Claim]:
        idle_since_ms = now_ms() - 2 * self.turn_ms
        if not await self.claims.take_turn_ahead(self.worker, self.turn_ms, idle_since_ms):
            return []
        try:
            claims = await self.claims.read_new(self.worker, count, None)
        finally:
            await self.claims.end_read_turn(self.worker)
        self.took(claims)
        return claims
