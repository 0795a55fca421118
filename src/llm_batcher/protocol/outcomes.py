"""The typed outcomes of the task protocol: task states, error codes, and what the Lua scripts
answer. The scripts reply with these values' strings; everything in Python uses the enums."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """The `state` field of a task hash: queued -> running -> done | error."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


class ErrorCode(StrEnum):
    """Every error code a client can see: in a refusal's JSON, or in a stream's `error` event.
    The README's table of codes is checked against this enum."""

    # Refusals of a request (api/errors.py maps each to its HTTP status).
    MISSING_CONTEXT = "missing_context"
    INVALID_BODY = "invalid_body"
    INVALID_LAST_EVENT_ID = "invalid_last_event_id"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_TASK = "unknown_task"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"  # /v1/* only
    MODEL_NOT_FOUND = "model_not_found"  # /v1/* only
    CONTEXT_TOO_LARGE = "context_too_large"
    QUEUE_FULL = "queue_full"
    SHUTTING_DOWN = "shutting_down"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    # Refusals that protect the API from its clients (api/guard.py, SECURITY.md).
    TOO_MANY_STREAMS = "too_many_streams"
    SERVER_BUSY = "server_busy"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNTRUSTED_HOST = "untrusted_host"
    # Both a refusal and a terminal error of a stream that had started.
    REDIS_UNAVAILABLE = "redis_unavailable"
    REDIS_FULL = "redis_full"  # Redis refuses writes: maxmemory reached under noeviction
    # Terminal errors of a task.
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"
    LOST = "lost"
    LLM_CRASHED = "llm_crashed"
    LLM_TIMEOUT = "llm_timeout"
    LLM_BAD_OUTPUT = "llm_bad_output"
    LLM_TRUNCATED = "llm_truncated"
    LLM_UNAVAILABLE = "llm_unavailable"


DEAD_LETTER_CODES = frozenset(
    {
        ErrorCode.DEAD_LETTER,
        ErrorCode.LLM_CRASHED,
        ErrorCode.LLM_TIMEOUT,
        ErrorCode.LLM_BAD_OUTPUT,
        ErrorCode.LLM_TRUNCATED,
        ErrorCode.LLM_UNAVAILABLE,
    }
)
"""The errors that make a task a dead letter: the workers gave up on it (its own context failed
the LLM, or it was delivered too often), not its client or its deadline. A dead letter keeps its
context for the result TTL, so that an operator can requeue it (`llm-batcher dlq`)."""


class StartOutcome(StrEnum):
    """START's answer for a claimed task."""

    RUN = "run"  # this worker runs the task (attempt n)
    MISSING = "missing"  # Redis no longer knows the task (expired, or lost in a restart)
    FINAL = "final"  # the task already ended
    NOT_HELD = "not_held"  # another worker holds the task's entry now (it took the task over)
    TIMEOUT = "timeout"  # its deadline passed: START ended it with `timeout`
    DEAD = "dead"  # delivered max_attempts times: START dead-lettered it

    @property
    def ended_task(self) -> ErrorCode | None:
        """The error START ended the task with, if it did."""
        return {
            StartOutcome.TIMEOUT: ErrorCode.TIMEOUT,
            StartOutcome.DEAD: ErrorCode.DEAD_LETTER,
        }.get(self)


class SubmitOutcome(StrEnum):
    """SUBMIT's answer for a request with an idempotency key."""

    QUEUED = "queued"  # a new task was queued
    EXISTING = "existing"  # the key names a task of the same request: that one
    CONFLICT = "conflict"  # the key names a task of another request: refused
    QUEUE_FULL = "queue_full"  # nothing queued: max_queue tasks are queued or running


class RequeueOutcome(StrEnum):
    """REQUEUE's answer for a dead letter."""

    OK = "ok"  # queued again, as a fresh run
    NOT_DEAD = "not_dead"  # not a dead letter (requeued already, purged, expired or unknown)
    QUEUE_FULL = "queue_full"  # nothing queued: max_queue tasks are queued or running


class WriteResult(StrEnum):
    """A worker's write (APPEND, FINISH) into a task's answer."""

    OK = "ok"
    FENCED = "fenced"  # another attempt owns the task now
    NOT_RUNNING = "not_running"  # the task is not running (it ended, e.g. by its deadline)
    MISSING = "missing"  # Redis no longer knows the task
    INCOMPLETE = "incomplete"  # a `done` refused: the answer's tokens are not all in Redis

    @property
    def ours(self) -> bool:
        """Whether the task is still this attempt's to write."""
        return self is WriteResult.OK
