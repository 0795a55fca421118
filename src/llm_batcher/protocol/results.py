"""Reading a task's answer: its result stream (tokens, then one terminal entry), the pub/sub
announcements of its entries, and the outcome records behind /stats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, Keys, token_entry_id, token_index

RESULT_PAGE_ENTRIES = 1000
"""Most result entries one read takes: a resume of a 100,000-token answer used to read it all
at once, holding Redis for 0.1 s and the API's memory for 100 MB."""


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """One entry of a task's result stream: a token, or the terminal `done` / `error`."""

    entry_id: str
    kind: str  # token | done | error
    text: str = ""
    data: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.entry_id == TERMINAL_ENTRY_ID

    @property
    def index(self) -> int:
        """0-based token position (tokens only)."""
        return token_index(self.entry_id)

    @staticmethod
    def from_announcement(payload: bytes | str) -> list[ResultEntry]:
        """Parse a pub/sub announcement: the terminal entry, or consecutive tokens (the first
        one's id and every text, docs/protocol.md)."""
        obj = json.loads(payload)
        texts = obj.get("texts")
        if texts is None:
            return [ResultEntry(obj["id"], obj["kind"], obj.get("text", ""), obj.get("data"))]
        first = token_index(obj["id"])
        return [ResultEntry(token_entry_id(first + i), "token", t) for i, t in enumerate(texts)]

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> ResultEntry:
        """Parse an entry as XRANGE returns it."""
        eid = reply_text(entry_id)
        kind = reply_text(fields[b"kind"])
        if kind == "token":
            return cls(eid, kind, text=fields[b"text"].decode())
        return cls(eid, kind, data=json.loads(fields[b"data"]))


@dataclass(frozen=True, slots=True)
class Resumable:
    """A task a stream may resume: its deadline (ms since the epoch), and the hash of the API
    key that submitted it ("" when keys were off)."""

    deadline_ms: int
    owner: str


class Results:
    """Read-only views of tasks and their answers."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def after(
        self, task_id: str, index: int, count: int = RESULT_PAGE_ENTRIES
    ) -> list[ResultEntry]:
        """At most ``count`` result entries after token ``index`` (-1: from the start), the
        terminal entry included if it is among them; fewer than ``count``: nothing more yet."""
        raw: Any = await self._redis.xrange(
            self._keys.result(task_id), min=f"({token_entry_id(index)}", max="+", count=count
        )
        return [ResultEntry.from_fields(eid, fields) for eid, fields in raw]

    async def resumable(self, task_id: str) -> Resumable | None:
        """What resuming the task needs to know; None if Redis does not know the task."""
        deadline, owner = await self._redis.hmget(self._keys.task(task_id), "deadline_ms", "owner")
        if deadline is None:
            return None
        return Resumable(int(deadline), reply_text(owner) if owner else "")

    async def task_exists(self, task_id: str) -> bool:
        """Whether Redis still knows the task (it expires after the result TTL)."""
        return bool(await self._redis.exists(self._keys.task(task_id)))

    async def outcome_records(
        self, window_s: float, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The outcome records of the latest ``limit`` tasks that ended in the last window_s
        seconds (by Redis's clock), as the ending scripts wrote them (lua/ending.lua), and how
        many tasks ended in the window. The limit bounds what one call reads from Redis."""
        seconds, micros = await self._redis.time()
        since_ms = seconds * 1000 + micros // 1000 - int(window_s * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcount(self._keys.stats, since_ms, "+inf")
        pipe.zrevrangebyscore(self._keys.stats, "+inf", since_ms, start=0, num=limit)
        count, raw = await pipe.execute()
        return [json.loads(reply_text(member)) for member in raw], int(count)

    async def previews(self, task_ids: list[str]) -> list[str]:
        """What /stats shows of each task's context ("" once the task has expired)."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(self._keys.task(task_id), "preview")
        return [reply_text(p) if p else "" for p in await pipe.execute()]
