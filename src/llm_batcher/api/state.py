"""What one API process shares between its requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from llm_batcher.api.auth import KeyRing
from llm_batcher.api.hub import ResultHub
from llm_batcher.api.liveness import RedisLiveness
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.settings import ApiSettings

if TYPE_CHECKING:
    from llm_batcher.api.statsview import SharedReport


@dataclass
class AppState:
    settings: ApiSettings
    redis: Redis
    queue: TaskQueue
    hub: ResultHub
    draining: bool = False
    liveness: RedisLiveness = field(default_factory=RedisLiveness)
    api_keys: KeyRing | None = None  # None: /generate is open
    admin_keys: KeyRing | None = None
    stats: SharedReport | None = None  # the /stats report, made on first use
