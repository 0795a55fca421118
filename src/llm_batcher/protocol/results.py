"""Reading a task's answer: its result stream (tokens, then one terminal entry), the pub/sub
announcements of its entries, and the outcome records behind /stats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llm_batcher.protocol.connection import reply_text
from llm_batcher.protocol.keys import TERMINAL_ENTRY_ID, Keys, token_entry_id, token_index


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

    @classmethod
    def from_message(cls, payload: str) -> ResultEntry:
        """Parse the pub/sub announcement of an entry."""
        obj = json.loads(payload)
        return cls(obj["id"], obj["kind"], obj.get("text", ""), obj.get("data"))

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> ResultEntry:
        """Parse an entry as XRANGE returns it."""
        eid = reply_text(entry_id)
        kind = reply_text(fields[b"kind"])
        if kind == "token":
            return cls(eid, kind, text=fields[b"text"].decode())
        return cls(eid, kind, data=json.loads(fields[b"data"]))


class Results:
    """Read-only views of tasks and their answers."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def after(self, task_id: str, index: int) -> list[ResultEntry]:
        """Result entries after token ``index`` (-1: from the start), terminal entry included."""
        raw: Any = await self._redis.xrange(
            self._keys.result(task_id), min=f"({token_entry_id(index)}", max="+"
        )
        return [ResultEntry.from_fields(eid, fields) for eid, fields in raw]

    async def deadline_of(self, task_id: str) -> int | None:
        """The task's deadline in ms since the epoch; None if Redis does not know the task."""
        value = await self._redis.hget(self._keys.task(task_id), "deadline_ms")
        return int(value) if value is not None else None

    async def task_exists(self, task_id: str) -> bool:
        """Whether Redis still knows the task (it expires after the result TTL)."""
        return bool(await self._redis.exists(self._keys.task(task_id)))

    async def outcome_records(self, window_s: float) -> list[dict[str, Any]]:
        """The outcome records of the tasks that ended in the last window_s seconds (by Redis's
        clock), as the ending scripts wrote them (lua/ending.lua)."""
        seconds, micros = await self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        raw: Any = await self._redis.zrangebyscore(
            self._keys.stats, now_ms - int(window_s * 1000), "+inf"
        )
        return [json.loads(reply_text(member)) for member in raw]
