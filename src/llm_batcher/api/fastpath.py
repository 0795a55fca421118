"""/generate without FastAPI's per-request machinery: the hot path of the API.

Every stream costs a pass through FastAPI's middleware, routing and parameter handling, about a
sixth of the API's CPU time per request with a fast model. Requests for GET and POST /generate
are served here instead, before FastAPI sees them, by the same code the documented routes call
(routes.py: they stay for the OpenAPI schema, and answer /generate in an app without this path).
Every other request, and every other method on /generate, goes to FastAPI. Every request
passes the Host check first; a stream holds a slot of the stream limits while it is open.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llm_batcher.api import generate
from llm_batcher.api.errors import ENDPOINTS, ApiError, refusal
from llm_batcher.api.guard import Guard, StreamLimits, untrusted_host
from llm_batcher.api.headers import with_security_headers
from llm_batcher.api.state import AppState

log = logging.getLogger(__name__)

_OPENAI_STREAMS = {path: label for path, label in ENDPOINTS.items() if path.startswith("/v1/")}
"""The OpenAI-compatible paths that hold a stream (or a wait) per request, by endpoint label."""


class Api(FastAPI):
    """The FastAPI app, with GET and POST /generate answered before its middleware, and the
    guards (guard.py, headers.py) in front of everything."""

    guard: Guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
        elif not self.guard.hosts.allows(scope):
            await refusal(untrusted_host(), None)(scope, receive, send)
        elif scope["path"] == "/generate" and scope["method"] in ("GET", "POST"):
            await _serve_generate(self.state.llmb, self.guard.streams, scope, receive, send)
        elif scope["path"] in _OPENAI_STREAMS and scope["method"] == "POST":
            await self._serve_limited(scope, receive, send)
        else:
            await super().__call__(scope, receive, with_security_headers(send, scope["path"]))

    async def _serve_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An OpenAI-compatible request, through FastAPI, holding a slot of the stream limits
        while it is answered, as a /generate stream does."""
        streams = self.guard.streams
        authorization = None
        if self.state.llmb.api_keys is not None:
            authorization = Request(scope).headers.get("authorization")
        client = streams.client_of(scope, authorization)
        try:
            streams.acquire(client)
        except ApiError as error:
            endpoint = _OPENAI_STREAMS[scope["path"]]
            await refusal(error, endpoint, openai=True)(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, with_security_headers(send, scope["path"]))
        finally:
            streams.release(client)


async def _serve_generate(
    state: AppState, streams: StreamLimits, scope: Scope, receive: Receive, send: Send
) -> None:
    request = Request(scope, receive)
    # A Bearer token names the client only when API keys are on: otherwise a made-up token per
    # request would escape the limit of its address.
    bearer = request.headers.get("authorization") if state.api_keys is not None else None
    client = streams.client_of(scope, bearer)
    try:
        streams.acquire(client)
    except ApiError as error:
        await refusal(error, "generate")(scope, receive, send)
        return
    try:
        response = await _answer(state, request)
        await response(scope, receive, send)
    except ClientDisconnect:
        # Gone before its body was in: it hung up, or the read timeout (server.py) cut it off.
        log.info("a POST /generate ended before its body arrived")
    finally:
        streams.release(client)


async def _answer(state: AppState, request: Request) -> Response:
    try:
        owner = generate.owner_of(state, request)
        resume = request.headers.get("last-event-id")
        if request.method == "GET":
            query = request.query_params
            return await generate.for_get(
                state, query.get("context"), resume or query.get("last_event_id"), owner
            )
        return await generate.for_post(state, request, resume, owner)
    except ApiError as error:
        return refusal(error, "generate")
