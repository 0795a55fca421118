"""HTTP routes: /generate (GET and POST), health, and the test page.

GET and POST /generate are served by fastpath.Api before FastAPI's routing; their routes here
document them in the OpenAPI schema and run the same code."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from llm_batcher.api import generate
from llm_batcher.api.outage import redis_call
from llm_batcher.api.sse import SseResponse
from llm_batcher.api.state import AppState
from llm_batcher.api.statsview import shared_report, view_for
from llm_batcher.clock import now_ms
from llm_batcher.metrics import API_REGISTRY, exposition
from llm_batcher.protocol.connection import REDIS_UNAVAILABLE

router = APIRouter()
STATIC_DIR = Path(__file__).parent / "static"


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
    """Ready to accept and queue work: Redis answers and this replica is not shutting down.

    Live workers are reported (`workers`, `no_live_worker`) but do not fail readiness: a request
    queued while no worker runs waits for one, so scaling workers to zero, or workers that crash
    in a loop, must not take every API replica out of its Service. The metric
    llm_batcher_workers_live is what alerts on a missing worker."""
    state = _state(request)
    detail: dict[str, object] = {"draining": state.draining, "redis": False, "workers": None}
    try:
        async with asyncio.timeout(state.settings.redis_timeout_s):
            await state.redis.ping()
            detail["redis"] = True
            workers = await state.queue.claims.live_workers(now_ms(), state.settings.lease_ms)
            detail["workers"] = workers
            detail["no_live_worker"] = workers == 0
    except REDIS_UNAVAILABLE as exc:
        detail["error"] = f"Redis unreachable: {exc or type(exc).__name__}"
    ready = detail["redis"] is True and not state.draining
    return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics of this API process, queue depth included (on LLMB_METRICS_PORT or
    LLMB_METRICS_FD instead, when one is set)."""
    if _state(request).settings.metrics_apart:
        return Response("served on the metrics port\n", status_code=404, media_type="text/plain")
    return Response(exposition(API_REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", tags=["stats"])
async def stats(request: Request) -> JSONResponse:
    """Latency quantiles, request counts and the slowest requests of the sliding window,
    the same on every replica, plus the queue depth and live workers. The slowest requests name
    their task and context only for an admin key (`Authorization: Bearer <admin key>`)."""
    state = _state(request)
    view = view_for(state, request.headers.get("authorization"))
    if state.stats is None:
        state.stats = shared_report(state)
    report = await redis_call(state, state.stats.get())
    return JSONResponse(view(report), headers={"Cache-Control": "no-cache"})


@router.get(
    "/generate",
    tags=["generate"],
    response_class=SseResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 401: {}, 413: {}, 422: {}, 503: {}},
)
async def generate_get(
    request: Request,
    context: Annotated[str | None, Query(description="The prompt (URL-encoded).")] = None,
    last_event_id: Annotated[
        str | None,
        Query(description="Resume a stream after this event id (same as Last-Event-ID)."),
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> SseResponse:
    """Queue a task and stream its answer as Server-Sent Events (see the README's contract)."""
    state = _state(request)
    resume = last_event_id_header or last_event_id
    return await generate.for_get(state, context, resume, generate.owner_of(state, request))


@router.post(
    "/generate",
    tags=["generate"],
    response_class=SseResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 401: {}, 413: {}, 422: {}, 503: {}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": generate.GenerateRequest.model_json_schema()}
            },
        }
    },
)
async def generate_post(
    request: Request,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> SseResponse:
    """The same stream for a JSON body `{"context": "..."}`, for contexts too long for a URL.
    With an `Idempotency-Key` header, a retry of the same request streams the first try's task
    instead of queueing another (README, "Retrying a submit")."""
    state = _state(request)
    owner = generate.owner_of(state, request)
    return await generate.for_post(state, request, last_event_id_header, owner)
