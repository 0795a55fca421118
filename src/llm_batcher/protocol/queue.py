"""`TaskQueue`: the task protocol over one Redis client, for one process and all its coroutines."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from llm_batcher.protocol.claims import Claims
from llm_batcher.protocol.dead_letters import DeadLetters
from llm_batcher.protocol.keys import Keys
from llm_batcher.protocol.results import Results
from llm_batcher.protocol.scripts import register_all
from llm_batcher.protocol.tasks import Tasks


@dataclass(frozen=True, slots=True)
class TaskQueue:
    """The state machine (tasks), claims and leases (claims), reading answers (results) and
    the dead letters (dead_letters), over one client (redis) and one schema (keys)."""

    redis: Redis
    keys: Keys
    tasks: Tasks
    claims: Claims
    results: Results
    dead_letters: DeadLetters

    @classmethod
    def create(
        cls, redis: Redis, keys: Keys, *, result_ttl_s: float, stats_window_s: float = 300
    ) -> TaskQueue:
        """Register the scripts on ``redis`` and build the parts."""
        scripts = register_all(redis)
        claims = Claims(redis, keys, scripts)
        tasks = Tasks(
            redis,
            keys,
            scripts,
            claims,
            result_ttl_s=result_ttl_s,
            stats_window_s=stats_window_s,
        )
        results = Results(redis, keys)
        dead_letters = DeadLetters(redis, keys, scripts, result_ttl_s=result_ttl_s)
        return cls(
            redis=redis,
            keys=keys,
            tasks=tasks,
            claims=claims,
            results=results,
            dead_letters=dead_letters,
        )
