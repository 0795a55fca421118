"""The Redis schema in one place: every key and stream name, entry id and fixed name that
llm-batcher uses (docs/protocol.md, part 3). The Lua scripts get these values from here too
(scripts.py prepends them as constants), so nothing below is written down twice."""

from __future__ import annotations

from dataclasses import dataclass

WORKER_GROUP = "workers"
"""Consumer group of the task stream that all workers share."""

TERMINAL_ENTRY_ID = "1-0"
"""Result-stream id of a task's one terminal entry (done or error)."""

TOKEN_ENTRY_PREFIX = "0-"
"""Result-stream ids of tokens: this prefix, then the token's 1-based position."""

MAX_TOKEN_INDEX = 2**63 - 1
"""Largest token index a client may name (a resume reads the range after it)."""

STATS_MAX_RECORDS = 50_000
"""Most outcome records the stats sorted set keeps, whatever the window."""

DEAD_LETTER_MAXLEN = 1000
"""Most dead letters the index keeps (the newest; an older one trimmed from it loses its context,
so that dead letters hold at most this many contexts in Redis), and about how many entries the
dead-letter stream keeps."""

UNANSWERED_TTL_MS = 60_000
"""How long a task that ended in error before its first token stays in Redis (at most; the
result TTL when shorter): a cancelled task has no reader, and a refused one nothing to resume."""

ARRIVALS_KEPT = 64
"""How many of the newest arrival times the arrivals list keeps."""

RELEASED_CONSUMER = "operator:released"
"""Consumer the operator moves a gone worker's tasks to, marked idle for ages, so that the next
live worker's takeover (XAUTOCLAIM) takes them at once. Never a pod name (it has a colon)."""


def token_entry_id(index: int) -> str:
    """Result-stream id of token ``index`` (0-based): ids are positions, so resuming is a range."""
    return f"{TOKEN_ENTRY_PREFIX}{index + 1}"


def token_index(entry_id: str) -> int:
    """Inverse of token_entry_id."""
    return int(entry_id.split("-", 1)[1]) - 1


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    @property
    def tasks(self) -> str:
        """Stream of queued tasks, consumed by the WORKER_GROUP."""
        return f"{self.prefix}:tasks"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat in ms since the epoch."""
        return f"{self.prefix}:workers"

    @property
    def beats(self) -> str:
        """Hash: worker id -> `last,since`, in ms of Redis's clock: its last heartbeat, and when
        its current run of heartbeats without a break began. Other workers judge from it that a
        worker is dead, and take its tasks over (claims.Claims.take_over_dead)."""
        return f"{self.prefix}:beats"

    @property
    def dead(self) -> str:
        """Capped stream: one entry per task that became a dead letter (task_id, attempts, worker,
        code, at_ms), a log that readers follow by entry id (the operator)."""
        return f"{self.prefix}:dead"

    @property
    def dead_letters(self) -> str:
        """Sorted set: task id -> when it became a dead letter (ms, Redis's clock); at most
        DEAD_LETTER_MAXLEN, none older than the result TTL (outcomes.DEAD_LETTER_CODES)."""
        return f"{self.prefix}:dead_letters"

    @property
    def reader(self) -> str:
        """The read turn: only the worker holding it reads new tasks. Idle workers that all block
        on the stream would take a burst's tasks in turn and split it into small batches; with
        one reader at a time, a batch fills within its window before the next worker reads."""
        return f"{self.prefix}:reader"

    @property
    def idle(self) -> str:
        """Sorted set: worker id -> ms when it was last seen idle (waiting for tasks, or writing
        its batch's last answers). A busy worker reads its next batch ahead only while no other
        worker is idle."""
        return f"{self.prefix}:idle"

    @property
    def arrivals(self) -> str:
        """List of the newest task arrivals' times (ms, Redis's clock, newest first), at most
        ARRIVALS_KEPT: what the adaptive window judges from (worker/window.py)."""
        return f"{self.prefix}:arrivals"

    @property
    def stats(self) -> str:
        """Sorted set of finished tasks' timings (score: end time in ms), for /stats."""
        return f"{self.prefix}:stats"

    def task(self, task_id: str) -> str:
        """Hash of one task: context, state, timings, attempt."""
        return f"{self.prefix}:task:{task_id}"

    def result(self, task_id: str) -> str:
        """Stream of one task's answer; also the pub/sub channel its entries are announced on."""
        return f"{self.prefix}:result:{task_id}"

    def idempotency(self, owner: str, key_digest: str) -> str:
        """String: the task id and request fingerprint of an `Idempotency-Key`, per client
        (``owner``: the hash of its API key, "" with keys off); expires with the result TTL."""
        return f"{self.prefix}:idem:{owner}:{key_digest}"

    def task_id_of_channel(self, channel: str) -> str:
        """The task id a result channel belongs to."""
        return channel.removeprefix(self.result(""))

    @property
    def operator(self) -> str:
        """The operator's lock: the id of the one operator replica that acts, with a TTL."""
        return f"{self.prefix}:operator"

    @property
    def operator_dead_seen(self) -> str:
        """Id of the last dead-letter entry the operator reported as a Kubernetes Event."""
        return f"{self.prefix}:operator:dead-seen"
