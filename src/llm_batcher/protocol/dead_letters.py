"""Dead letters: tasks the workers gave up on (outcomes.DEAD_LETTER_CODES), as the script that
ended each one indexed it (lua/ending.lua), and what an operator does with them: read, requeue
(a fresh run of the same task, lua/requeue.lua) or purge (lua/purge.lua)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, Keys
from llm_batcher.protocol.outcomes import RequeueOutcome
from llm_batcher.protocol.scripts import Script

PURGE_BATCH = 100
"""Dead letters one PURGE call deletes: a purge of thousands holds Redis a little at a time."""

_FIELDS = (
    "code", "attempt", "handed_back", "worker", "tokens", "preview", "created_ms", "owner",
    "requeues",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter: its error, its attempts, and what its context looks like."""

    task_id: str
    dead_ms: int  # when it became a dead letter (ms since the epoch, Redis's clock)
    code: str
    message: str
    attempts: int  # as max_attempts counts them: those handed back (HAND_BACK) left out
    handed_back: int  # attempts given up by workers that stopped in order, refunded
    worker: str  # the worker of its last attempt ("" if none started it)
    tokens: int  # tokens its failed run wrote (a requeue deletes them)
    preview: str
    context_bytes: int
    created_ms: int
    owner: str  # hash of the API key that submitted it ("" with keys off)
    requeues: int  # how often it was requeued before

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "dead_ms": self.dead_ms,
            "code": self.code,
            "message": self.message,
            "attempts": self.attempts,
            "handed_back": self.handed_back,
            "worker": self.worker or None,
            "tokens": self.tokens,
            "context_preview": self.preview,
            "context_bytes": self.context_bytes,
            "created_ms": self.created_ms,
            "owner": self.owner or None,
            "requeues": self.requeues,
        }


@dataclass(frozen=True, slots=True)
class Requeued:
    """What REQUEUE did with one dead letter, and the new run's deadline if it queued it."""

    task_id: str
    outcome: RequeueOutcome
    deadline_ms: int = 0


class DeadLetters:
    """The dead-letter index and the operations on it."""

    def __init__(
        self, redis: Redis, keys: Keys, scripts: dict[Script, AsyncScript], *, result_ttl_s: float
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._requeue = scripts[Script.REQUEUE]
        self._purge = scripts[Script.PURGE]
        self.ttl_ms = int(result_ttl_s * 1000)

    async def ids(self) -> list[str]:
        """The dead letters' task ids, newest first (at most keys.DEAD_LETTER_MAXLEN)."""
        members: Any = await self._redis.zrevrange(self._keys.dead_letters, 0, -1)
        return [reply_text(m) for m in members]

    async def entries(self) -> list[DeadLetter]:
        """Every dead letter Redis still knows, newest first."""
        scored: Any = await self._redis.zrevrange(self._keys.dead_letters, 0, -1, withscores=True)
        return await self._read([(reply_text(m), int(score)) for m, score in scored])

    async def get(self, task_id: str) -> DeadLetter | None:
        """One dead letter; None if the task is not one (or no longer)."""
        score = await self._redis.zscore(self._keys.dead_letters, task_id)
        if score is None:
            return None
        found = await self._read([(task_id, int(score))])
        return found[0] if found else None

    async def _read(self, scored: list[tuple[str, int]]) -> list[DeadLetter]:
        pipe = self._redis.pipeline(transaction=False)
        for task_id, _ in scored:
            pipe.hmget(self._keys.task(task_id), *_FIELDS)
            pipe.hstrlen(self._keys.task(task_id), "context")
            pipe.xrange(self._keys.result(task_id), TERMINAL_ENTRY_ID, TERMINAL_ENTRY_ID)
        replies = await pipe.execute()
        found = []
        for i, (task_id, dead_ms) in enumerate(scored):
            fields, context_bytes, terminal = replies[3 * i : 3 * i + 3]
            if fields[0] is None:  # expired, or ended otherwise since: not a dead letter
                continue
            code, attempt, handed_back, worker, tokens, preview, created, owner, requeues = (
                reply_text(f) if f is not None else "" for f in fields
            )
            found.append(
                DeadLetter(
                    task_id=task_id,
                    dead_ms=dead_ms,
                    code=code,
                    message=_message(terminal),
                    attempts=int(attempt or 0) - int(handed_back or 0),
                    handed_back=int(handed_back or 0),
                    worker=worker,
                    tokens=int(tokens or 0),
                    preview=preview,
                    context_bytes=int(context_bytes),
                    created_ms=int(created or 0),
                    owner=owner,
                    requeues=int(requeues or 0),
                )
            )
        return found

    async def requeue(self, task_id: str, *, now_ms: int, max_queue: int) -> Requeued:
        """Queue a dead letter again, as a fresh run of the same task (lua/requeue.lua)."""
        keys = [
            self._keys.task(task_id),
            self._keys.result(task_id),
            self._keys.tasks,
            self._keys.dead_letters,
        ]
        args: list[str | int] = [task_id, now_ms, self.ttl_ms, max_queue]
        reply = await self._requeue(keys=keys, args=args)
        outcome = RequeueOutcome(reply_text(reply[0]))
        return Requeued(task_id, outcome, int(reply[1]) if outcome is RequeueOutcome.OK else 0)

    async def purge(self) -> int:
        """Delete every dead letter (its task and its answer); how many there were."""
        ids = await self.ids()
        purged = 0
        for start in range(0, len(ids), PURGE_BATCH):
            batch = ids[start : start + PURGE_BATCH]
            keys = [self._keys.dead_letters]
            for task_id in batch:
                keys += [self._keys.task(task_id), self._keys.result(task_id)]
            purged += int(await self._purge(keys=keys, args=list(batch)))
        return purged


def _message(terminal: Any) -> str:
    """The message of a task's terminal `error` entry ("" without one)."""
    if not terminal:
        return ""
    data = json.loads(terminal[0][1][b"data"])
    return str(data.get("message", "")) if isinstance(data, dict) else ""
