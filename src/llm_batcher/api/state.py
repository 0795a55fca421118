"""What one API process shares between its requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from llm_batcher.api.hub import ResultHub
from llm_batcher.api.liveness import RedisLiveness
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.settings import ApiSettings


@dataclass
class AppState:
    settings: ApiSettings
    redis: Redis
    queue: TaskQueue
    hub: ResultHub
    draining: bool = False
    liveness: RedisLiveness = field(default_factory=RedisLiveness)
