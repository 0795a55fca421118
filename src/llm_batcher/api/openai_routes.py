"""The OpenAI-compatible endpoints: /v1/models, /v1/completions and /v1/chat/completions.

A completion is a task like any other: queued by generate.queue_task (the same checks, queue
and limits as /generate), streamed by the same stream.TaskStream (deadlines, cancellation of a
queued task when the client hangs up, metrics), only encoded as OpenAI's objects (openai_wire).
Refusals take OpenAI's error shape (errors.refusal, for every path under /v1/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llm_batcher.api import generate, idempotency
from llm_batcher.api.errors import ApiError
from llm_batcher.api.openai_request import (
    ChatBody,
    CompletionBody,
    CompletionRequest,
    parse_chat,
    parse_completion,
)
from llm_batcher.api.openai_wire import Answer, ChunkEncoder, Collector, prompt_tokens
from llm_batcher.api.sse import CollectedResponse, SseResponse
from llm_batcher.api.state import AppState
from llm_batcher.api.stream import TaskStream
from llm_batcher.protocol.outcomes import ErrorCode

router = APIRouter(prefix="/v1", tags=["openai"])
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {} for status in (400, 401, 404, 413, 429, 503)
}


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.llmb
    return state


def _model(state: AppState) -> dict[str, Any]:
    name = state.settings.model_name
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-batcher"}


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """The model this deployment serves (LLMB_MODEL_NAME)."""
    state = _state(request)
    generate.owner_of(state, request)
    return JSONResponse({"object": "list", "data": [_model(state)]})


@router.get("/models/{model_id:path}", responses=_REFUSALS)
async def get_model(request: Request, model_id: str) -> JSONResponse:
    """The model, if ``model_id`` names it; 404 `model_not_found` otherwise."""
    state = _state(request)
    generate.owner_of(state, request)
    _check_model(state, model_id)
    return JSONResponse(_model(state))


def _body_doc(model: type[ChatBody] | type[CompletionBody]) -> dict[str, Any]:
    schema = model.model_json_schema()
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


@router.post("/completions", responses=_REFUSALS, openapi_extra=_body_doc(CompletionBody))
async def completions(request: Request) -> Response:
    """A completion of `prompt` (README, "OpenAI-compatible API")."""
    return await _answer(request, parse_completion)


@router.post("/chat/completions", responses=_REFUSALS, openapi_extra=_body_doc(ChatBody))
async def chat_completions(request: Request) -> Response:
    """A chat completion of `messages`, through the chat template of the README."""
    return await _answer(request, parse_chat)


async def _answer(request: Request, parse: Callable[[bytes], CompletionRequest]) -> Response:
    state = _state(request)
    owner = generate.owner_of(state, request)
    # JSON escapes can take 6 bytes per byte of context, plus the envelope.
    body = await generate.read_body(request, state.settings.max_context_bytes * 6 + 4096)
    asked = parse(body)
    _check_model(state, asked.model)
    once = idempotency.once_of(state, request, owner, body)
    stream = await generate.queue_task(
        state, asked.context, owner, asked.max_tokens, asked.stop, once=once
    )
    answer = Answer(
        endpoint=asked.endpoint,
        task_id=stream.task_id,
        model=asked.model,
        created=int(time.time()),
        prompt_tokens=prompt_tokens(asked.context),
        include_usage=asked.include_usage,
    )
    if asked.stream:
        task_stream = TaskStream(
            state.queue, state.hub, state.settings, stream, ChunkEncoder(answer), asked.endpoint
        )
        return SseResponse(
            task_stream.events(),
            headers=generate.SSE_HEADERS,
            send_timeout_s=state.settings.send_timeout_s,
            on_close=task_stream.close,
            task_id=stream.task_id,
        )
    collector = Collector(answer)
    task_stream = TaskStream(
        state.queue, state.hub, state.settings, stream, collector, asked.endpoint
    )
    return CollectedResponse(
        task_stream.events(),
        collector.result,
        send_timeout_s=state.settings.send_timeout_s,
        on_close=task_stream.close,
        task_id=stream.task_id,
    )


def _check_model(state: AppState, model: str) -> None:
    if model != state.settings.model_name:
        raise ApiError(
            ErrorCode.MODEL_NOT_FOUND,
            f"the model {model!r} does not exist here; this deployment serves "
            f"{state.settings.model_name!r}",
            "model",
        )
