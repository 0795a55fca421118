"""`Idempotency-Key` on POST /generate and POST /v1/*: a client that retries a submit whose answer
it never saw (a dropped connection, a timeout) gets the task of its first try, streamed from the
start as a resume from `<task_id>:-1` would, instead of queueing it twice.

The key is the client's (per API key: the owner hash scopes it, so one client cannot reach
another's task by guessing its key) and lives as long as answers do (LLMB_RESULT_TTL_S). It
remembers a fingerprint of the request, so the same key with another request is refused (422
`idempotency_key_reused`). Looking the key up and queueing the task is one Lua script
(protocol/lua/submit.lua): retries racing each other make one task.

A task submitted with a key is not cancelled when its client hangs up before a worker starts it,
unlike other tasks: the key says the client will come back for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

from starlette.requests import Request

from llm_batcher.api.errors import ApiError
from llm_batcher.api.outage import redis_call
from llm_batcher.api.state import AppState
from llm_batcher.api.stream import StreamState
from llm_batcher.protocol.outcomes import ErrorCode, SubmitOutcome
from llm_batcher.protocol.tasks import Once

log = logging.getLogger(__name__)

HEADER = "idempotency-key"
MAX_KEY_CHARS = 255


def once_of(state: AppState, request: Request, owner: str, body: bytes) -> Once | None:
    """The request's idempotency key, scoped to its client, with the fingerprint of its path and
    JSON body (formatting and key order aside); None without the header."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in raw):
        raise ApiError(
            ErrorCode.INVALID_IDEMPOTENCY_KEY,
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
        )
    digest = hashlib.sha256(raw.encode()).hexdigest()[:32]
    canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(f"{request.url.path}\n{canonical}".encode()).hexdigest()
    return Once(state.queue.keys.idempotency(owner, digest), fingerprint)


async def queue_once(
    state: AppState,
    once: Once,
    task_id: str,
    context: str,
    *,
    now_ms: int,
    deadline_ms: int,
    owner: str,
    max_tokens: int | None,
    stop: Sequence[str],
) -> StreamState:
    """Queue ``task_id`` under the key, or find the key's task; the state of a stream that reads
    it from the start."""
    settings = state.settings
    submitted = await redis_call(
        state,
        state.queue.tasks.submit_once(
            once,
            task_id,
            context,
            now_ms=now_ms,
            deadline_ms=deadline_ms,
            max_queue=settings.max_queue,
            owner=owner,
            max_tokens=max_tokens,
            stop=stop,
        ),
    )
    found = submitted.task_id
    if submitted.outcome is SubmitOutcome.QUEUE_FULL:
        raise ApiError(ErrorCode.QUEUE_FULL, f"{settings.max_queue} tasks are waiting; retry later")
    if submitted.outcome is SubmitOutcome.CONFLICT:
        log.info("Idempotency-Key of task %s reused for another request", found,
                 extra={"task_id": found})  # fmt: skip
        raise ApiError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was first used with another request; use a new key for a new "
            "request",
        )
    if submitted.outcome is SubmitOutcome.EXISTING:
        log.info("task %s submitted again with its Idempotency-Key: streamed from the start",
                 found, extra={"task_id": found})  # fmt: skip
        return StreamState(found, next_index=0, deadline_ms=submitted.deadline_ms)
    log.debug("task %s queued with an Idempotency-Key", found, extra={"task_id": found})
    return StreamState(found, next_index=0, deadline_ms=deadline_ms, created_here=True, keyed=True)
