"""/generate: checking a request, queueing its task or finding the task it resumes, and answering
with the task's event stream (stream.py)."""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Sequence

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request

from llm_batcher import contract
from llm_batcher.api import idempotency
from llm_batcher.api.errors import ApiError
from llm_batcher.api.headers import SECURITY_HEADERS
from llm_batcher.api.outage import redis_call
from llm_batcher.api.sse import SseResponse
from llm_batcher.api.state import AppState
from llm_batcher.api.stream import StreamState, TaskStream
from llm_batcher.background import spawn
from llm_batcher.clock import now_ms
from llm_batcher.protocol.outcomes import ErrorCode
from llm_batcher.protocol.tasks import Once

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    **SECURITY_HEADERS,
}


class GenerateRequest(BaseModel):
    """Body of POST /generate."""

    model_config = {"extra": "forbid"}
    context: str = Field(min_length=1, description="The prompt; echoed back by the mock LLM.")


def parse_body(body: bytes) -> str:
    """The context of a POST body; ApiError `invalid_body` if it is not {"context": "..."}."""
    try:
        return GenerateRequest.model_validate_json(body).context
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError(
            ErrorCode.INVALID_BODY, f'expected JSON {{"context": "..."}}: {problems}'
        ) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading it all."""
    too_large = ApiError(ErrorCode.CONTEXT_TOO_LARGE, f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def owner_of(state: AppState, request: Request) -> str:
    """The owner hash of the request's API key ("" when keys are off); 401 without a valid one.
    With keys off this reads nothing: the hot path stays as it was."""
    keys = state.api_keys
    return "" if keys is None else keys.require(request.headers.get("authorization"))


async def for_get(
    state: AppState, context: str | None, resume_after: str | None, owner: str
) -> SseResponse:
    """GET /generate: resume after ``resume_after`` (Last-Event-ID) if given, else submit."""
    if resume_after:
        return await resume(state, resume_after, owner)
    return await submit(state, context, owner)


async def for_post(
    state: AppState, request: Request, resume_after: str | None, owner: str
) -> SseResponse:
    """POST /generate: the same, with the context in a JSON body."""
    if resume_after:  # a Last-Event-ID header: no browser sends that cross-site unasked
        return await resume(state, resume_after, owner)
    # A form or a fetch() with text/plain from another site is a "simple request" a browser sends
    # without asking: only a JSON Content-Type (which needs a CORS preflight) queues a task.
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "POST /generate needs Content-Type: application/json"
        )
    # JSON escapes can take 6 bytes per byte of context, plus the envelope.
    body = await read_body(request, state.settings.max_context_bytes * 6 + 4096)
    context = parse_body(body)
    once = idempotency.once_of(state, request, owner, body)
    return respond(state, await queue_task(state, context, owner, once=once))


async def submit(state: AppState, context: str | None, owner: str = "") -> SseResponse:
    """Queue a new task for ``context`` and stream its answer; ``owner`` is the hash of the API
    key that submitted it (only that key may resume it)."""
    return respond(state, await queue_task(state, context, owner))


async def queue_task(
    state: AppState,
    context: str | None,
    owner: str = "",
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    once: Once | None = None,
) -> StreamState:
    """Queue a new task for ``context`` (with the limits of its answer, which the worker
    enforces), or with an idempotency key (``once``) find the task of an earlier try; the state
    of a stream that reads it from the start."""
    settings = state.settings
    if not context:
        raise ApiError(ErrorCode.MISSING_CONTEXT, "the context parameter is missing or empty")
    size = len(context.encode("utf-8", "surrogatepass"))
    if size > settings.max_context_bytes:
        raise ApiError(
            ErrorCode.CONTEXT_TOO_LARGE,
            f"the context is {size} bytes; the limit is {settings.max_context_bytes}",
        )
    if state.draining:
        raise ApiError(ErrorCode.SHUTTING_DOWN, "this API replica is shutting down")
    task_id = str(uuid.uuid4())
    now = now_ms()
    deadline = now + int(settings.task_timeout_s * 1000)
    if once is not None:  # its client retries rather than cancels: nothing to cancel on failure
        return await idempotency.queue_once(
            state, once, task_id, context, now_ms=now, deadline_ms=deadline, owner=owner,
            max_tokens=max_tokens, stop=stop,
        )  # fmt: skip
    tasks = state.queue.tasks
    # Subscribed before the task exists, so that its stream needs no first read of its results
    # (Tasks.submit, docs/protocol.md). Only the send is awaited, not Redis's confirmation:
    # waiting for confirmations before submitting made 29% of 10,000 streams opening at 1,000
    # a second fail with redis_unavailable.
    sub = await state.hub.open_ahead(task_id, settings.redis_timeout_s)
    try:
        queued = await redis_call(
            state,
            tasks.submit(
                task_id,
                context,
                now_ms=now,
                deadline_ms=deadline,
                max_queue=settings.max_queue,
                owner=owner,
                max_tokens=max_tokens,
                stop=stop,
                subscribed=sub is not None,
            ),
        )
    except BaseException:
        if sub is not None:
            state.hub.close(sub)
        # The submit may have reached Redis although this request gave up on it (a slow Redis,
        # or the client hung up meanwhile): cancel it, so that no worker runs a task nobody reads.
        spawn(tasks.cancel(task_id), f"cancel of unanswered task {task_id}")
        raise
    if queued is None:
        if sub is not None:
            state.hub.close(sub)
        raise ApiError(ErrorCode.QUEUE_FULL, f"{settings.max_queue} tasks are waiting; retry later")
    # One INFO line per request, when it ends (stream.py): a second one here cost 4% of the API's
    # CPU under load, for a fact the ending line and the worker's lines carry too.
    log.debug("task %s queued (%d bytes)", task_id, size, extra={"task_id": task_id})
    return StreamState(
        task_id, next_index=0, deadline_ms=deadline, created_here=True, sub=sub,
        announced_from_start=queued.subscribed_first,
    )  # fmt: skip


async def resume(state: AppState, last_event_id: str, owner: str = "") -> SseResponse:
    """Continue a task's stream right after the event ``last_event_id``. With API keys on, only
    the key that submitted the task may: any other gets the answer of an unknown task."""
    task_id, index = parse_event_id(last_event_id)
    found = await redis_call(state, state.queue.results.resumable(task_id))
    if found is None or (
        state.api_keys is not None and not hmac.compare_digest(found.owner, owner)
    ):
        raise ApiError(ErrorCode.UNKNOWN_TASK, f"task {task_id} is unknown or expired")
    deadline = found.deadline_ms
    log.info("task %s resumed after token %d", task_id, index, extra={"task_id": task_id})
    return respond(state, StreamState(task_id, next_index=index + 1, deadline_ms=deadline))


def parse_event_id(value: str) -> tuple[str, int]:
    """The task id and token index of an event id; ApiError `invalid_last_event_id` if malformed."""
    try:
        return contract.parse_event_id(value)
    except ValueError:
        raise ApiError(
            ErrorCode.INVALID_LAST_EVENT_ID, "Last-Event-ID must look like <task_id>:<index>"
        ) from None


def respond(state: AppState, stream: StreamState) -> SseResponse:
    """The SSE response of one task's stream."""
    task_stream = TaskStream(state.queue, state.hub, state.settings, stream)
    return SseResponse(
        task_stream.events(),
        headers=SSE_HEADERS,
        send_timeout_s=state.settings.send_timeout_s,
        on_close=task_stream.close,
        task_id=stream.task_id,
    )
