"""/generate without FastAPI's per-request machinery: the hot path of the API.

Every stream costs a pass through FastAPI's middleware, routing and parameter handling, about a
sixth of the API's CPU time per request with a fast model. Requests for GET and POST /generate
are served here instead, before FastAPI sees them, by the same code the documented routes call
(routes.py: they stay for the OpenAPI schema, and answer /generate in an app without this path).
Every other request, and every other method on /generate, goes to FastAPI.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llm_batcher.api import generate
from llm_batcher.api.errors import ApiError, refusal
from llm_batcher.api.state import AppState


class Api(FastAPI):
    """The FastAPI app, with GET and POST /generate answered before its middleware."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/generate"
            and scope["method"] in ("GET", "POST")
        ):
            await _serve_generate(self.state.llmb, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def _serve_generate(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response: Response
    try:
        owner = generate.owner_of(state, request)
        resume = request.headers.get("last-event-id")
        if scope["method"] == "GET":
            query = request.query_params
            response = await generate.for_get(
                state, query.get("context"), resume or query.get("last_event_id"), owner
            )
        else:
            response = await generate.for_post(state, request, resume, owner)
    except ApiError as error:
        response = refusal(error, "generate")
    await response(scope, receive, send)
