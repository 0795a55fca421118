"""HTTP routes: /generate (GET and POST), health, and the test page."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sse_starlette import EventSourceResponse

from llm_batcher.api.errors import ApiError
from llm_batcher.api.state import AppState
from llm_batcher.api.stream import StreamState, TaskStream, spawn_background
from llm_batcher.metrics import API_REGISTRY, exposition
from llm_batcher.stats import collect as collect_stats

log = logging.getLogger(__name__)
router = APIRouter()
STATIC_DIR = Path(__file__).parent / "static"

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
_SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
_MAX_TOKEN_INDEX = 2**63  # token i is result-stream entry 0-(i+1), a 64-bit sequence number
BUSY_WAIT_FACTOR = 10  # how many Redis timeouts a request waits while Redis answers others
T = TypeVar("T")


class GenerateRequest(BaseModel):
    """Body of POST /generate."""

    model_config = {"extra": "forbid"}
    context: str = Field(min_length=1, description="The prompt; echoed back by the mock LLM.")


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.llmb
    return state


@router.get("/", include_in_schema=False)
async def test_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(request: Request) -> JSONResponse:
    """Ready: not shutting down, Redis reachable, and at least one live worker."""
    state = _state(request)
    detail: dict[str, object] = {"draining": state.draining, "redis": False, "workers": 0}
    try:
        async with asyncio.timeout(state.settings.redis_timeout_s):
            await state.redis.ping()
            detail["redis"] = True
            detail["workers"] = await state.queue.live_workers(_now_ms(), state.settings.lease_ms)
    except _REDIS_DOWN as exc:
        detail["error"] = f"Redis unreachable: {exc or type(exc).__name__}"
    ready = detail["redis"] and detail["workers"] and not state.draining
    return JSONResponse({"ready": bool(ready), **detail}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus metrics of this API process, queue depth included."""
    return Response(exposition(API_REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", tags=["stats"])
async def stats(request: Request) -> JSONResponse:
    """Latency quantiles, request counts and the slowest requests of the sliding window,
    the same on every replica, plus the queue depth and live workers."""
    state = _state(request)
    settings = state.settings
    try:
        async with asyncio.timeout(settings.redis_timeout_s * 3):
            report = await collect_stats(
                state.queue,
                window_s=settings.stats_window_s,
                slowest=settings.stats_slowest,
                lease_ms=settings.lease_ms,
            )
    except _REDIS_DOWN as exc:
        raise ApiError(
            503,
            "redis_unavailable",
            f"Redis is unreachable: {exc or 'timeout'}",
            {"Retry-After": "2"},
        ) from exc
    return JSONResponse(report, headers={"Cache-Control": "no-cache"})


@router.get(
    "/generate",
    tags=["generate"],
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 413: {}, 422: {}, 503: {}},
)
async def generate_get(
    request: Request,
    context: Annotated[str | None, Query(description="The prompt (URL-encoded).")] = None,
    last_event_id: Annotated[
        str | None,
        Query(description="Resume a stream after this event id (same as Last-Event-ID)."),
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Queue a task and stream its answer as Server-Sent Events (see the README's contract)."""
    resume = last_event_id_header or last_event_id
    if resume:
        return await _resume(_state(request), resume)
    return await _submit(_state(request), context)


@router.post(
    "/generate",
    tags=["generate"],
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 413: {}, 422: {}, 503: {}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
        }
    },
)
async def generate_post(
    request: Request,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """The same stream for a JSON body `{"context": "..."}`, for contexts too long for a URL."""
    state = _state(request)
    if last_event_id_header:
        return await _resume(state, last_event_id_header)
    body = await _read_body(request, state.settings.max_context_bytes * 6 + 4096)
    try:
        payload = GenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError(
            422, "invalid_body", f'expected JSON {{"context": "..."}}: {problems}'
        ) from None
    return await _submit(state, payload.context)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "context_too_large", f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "context_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _submit(state: AppState, context: str | None) -> EventSourceResponse:
    settings = state.settings
    if not context:
        raise ApiError(422, "missing_context", "the context parameter is missing or empty")
    size = len(context.encode("utf-8", "surrogatepass"))
    if size > settings.max_context_bytes:
        raise ApiError(
            413, "context_too_large",
            f"the context is {size} bytes; the limit is {settings.max_context_bytes}",
        )  # fmt: skip
    if state.draining:
        raise ApiError(
            503, "shutting_down", "this API replica is shutting down", {"Retry-After": "1"}
        )
    task_id = str(uuid.uuid4())
    now = _now_ms()
    deadline = now + int(settings.task_timeout_s * 1000)
    try:
        queued = await _redis_call(
            state,
            state.queue.submit(
                task_id, context, now_ms=now, deadline_ms=deadline, max_queue=settings.max_queue
            ),
        )
    except BaseException:
        # The submit may have reached Redis although this request gave up on it (a slow Redis,
        # or the client hung up meanwhile): cancel it, so that no worker runs a task nobody reads.
        spawn_background(state.queue.cancel(task_id), f"cancel of unanswered task {task_id}")
        raise
    if not queued:
        raise ApiError(
            503,
            "queue_full",
            f"{settings.max_queue} tasks are waiting; retry later",
            {"Retry-After": "5"},
        )
    log.info("task %s queued (%d bytes)", task_id, size, extra={"task_id": task_id})
    stream = StreamState(task_id, next_index=0, deadline_ms=deadline, created_here=True)
    return _respond(state, stream)


async def _resume(state: AppState, last_event_id: str) -> EventSourceResponse:
    task_id, index = _parse_event_id(last_event_id)
    deadline = await _redis_call(state, state.queue.deadline_of(task_id))
    if deadline is None:
        raise ApiError(404, "unknown_task", f"task {task_id} is unknown or expired")
    log.info("task %s resumed after token %d", task_id, index, extra={"task_id": task_id})
    return _respond(state, StreamState(task_id, next_index=index + 1, deadline_ms=deadline))


async def _redis_call(state: AppState, call: Awaitable[T]) -> T:
    """Await one Redis call of a request; 503 `redis_unavailable` if Redis seems to be down.

    Redis counts as down when the call fails to connect, or gets no answer within
    redis_timeout_s while no other call of this process got one either. In a burst, calls
    wait for a pool connection and for the event loop, and that wait is no outage: with a
    plain timeout, 1,000 streams opened at once were refused as "Redis is unreachable".
    A Redis that answers others but not this call is given up on after BUSY_WAIT_FACTOR
    timeouts.
    """
    loop = asyncio.get_running_loop()
    timeout_s = state.settings.redis_timeout_s
    give_up_at = loop.time() + timeout_s * BUSY_WAIT_FACTOR
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if done:
                result = task.result()
                state.redis_answered_at = loop.time()
                return result
            now = loop.time()
            if now - state.redis_answered_at > timeout_s or now >= give_up_at:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
    except _REDIS_DOWN as exc:
        raise ApiError(
            503,
            "redis_unavailable",
            f"Redis is unreachable: {str(exc) or type(exc).__name__}",
            {"Retry-After": "2"},
        ) from exc
    finally:
        task.cancel()  # the request ended first (or gave up): do not leave the call running


def _parse_event_id(value: str) -> tuple[str, int]:
    task_id, _, index = value.strip().rpartition(":")
    try:
        parsed = str(uuid.UUID(task_id)), int(index)
        # -1 is the `task` event; an index outside Redis's stream-id range would make the
        # range read fail after the 200 went out, and EventSource would retry it forever.
        if not -1 <= parsed[1] < _MAX_TOKEN_INDEX:
            raise ValueError(index)
        return parsed
    except ValueError:
        raise ApiError(
            422, "invalid_last_event_id", "Last-Event-ID must look like <task_id>:<index>"
        ) from None


def _respond(state: AppState, stream: StreamState) -> EventSourceResponse:
    events = TaskStream(state.queue, state.hub, state.settings, stream).events()
    return EventSourceResponse(
        events, ping=state.settings.ping_s, headers=_SSE_HEADERS, send_timeout=30
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
