"""The API's refusals: one table from error code to HTTP status, and the one place that turns
domain errors into HTTP answers (routes raise, they never build error responses)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llm_batcher import metrics
from llm_batcher.api.headers import SECURITY_HEADERS
from llm_batcher.protocol.outcomes import ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MISSING_CONTEXT: 422,
    ErrorCode.INVALID_BODY: 422,
    ErrorCode.INVALID_LAST_EVENT_ID: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.UNSUPPORTED_PARAMETER: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.CONTEXT_TOO_LARGE: 413,
    ErrorCode.QUEUE_FULL: 503,
    ErrorCode.REDIS_UNAVAILABLE: 503,
    ErrorCode.REDIS_FULL: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TOO_MANY_STREAMS: 429,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.UNTRUSTED_HOST: 421,
    ErrorCode.INVALID_IDEMPOTENCY_KEY: 422,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
}
"""The status of every refusal; a code missing here is never a refusal."""

RETRY_AFTER_S: dict[ErrorCode, int] = {
    ErrorCode.QUEUE_FULL: 5,
    ErrorCode.REDIS_UNAVAILABLE: 2,
    ErrorCode.REDIS_FULL: 5,
    ErrorCode.SHUTTING_DOWN: 1,
    ErrorCode.TOO_MANY_STREAMS: 2,
    ErrorCode.SERVER_BUSY: 2,
}
"""The Retry-After header of refusals that are worth retrying."""

OPENAI_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MISSING_CONTEXT: 400,
    ErrorCode.INVALID_BODY: 400,
    ErrorCode.QUEUE_FULL: 429,
}
"""Where the OpenAI-compatible endpoints (/v1/*) answer otherwise than HTTP_STATUS: OpenAI's
clients take 400 for bad input and retry 429 after its Retry-After."""

_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
ENDPOINTS = {
    "/generate": "generate",
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
}
"""The `endpoint` label of llm_batcher_requests_total, by path."""


def _refusal_headers(code: ErrorCode) -> dict[str, str]:
    retry_after = RETRY_AFTER_S.get(code)
    headers = dict(SECURITY_HEADERS)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    if code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="llm-batcher"'
    return headers


_REFUSAL_HEADERS = {code: _refusal_headers(code) for code in HTTP_STATUS}


class ApiError(Exception):
    """A request the API refuses: a stable code (its HTTP status is HTTP_STATUS[code]) and a
    message for people."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param  # the request parameter at fault, if one is

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


def redis_unavailable(exc: BaseException) -> ApiError:
    """The refusal for a request whose Redis call failed to connect or timed out."""
    return ApiError(
        ErrorCode.REDIS_UNAVAILABLE, f"Redis is unreachable: {str(exc) or type(exc).__name__}"
    )


def redis_full() -> ApiError:
    """The refusal for a request whose Redis write was refused for lack of memory."""
    return ApiError(ErrorCode.REDIS_FULL, "Redis is full and refuses new tasks; retry later")


def refusal(error: ApiError, endpoint: str | None, *, openai: bool = False) -> JSONResponse:
    """The JSON answer to a refused request, counted as `rejected` if it was for an endpoint
    that queues tasks; in OpenAI's error shape (and statuses) with ``openai``."""
    if endpoint is not None:
        metrics.REQUESTS.labels("rejected", error.code.value, endpoint).inc()
    headers = _REFUSAL_HEADERS[error.code]
    if openai:
        status = OPENAI_STATUS.get(error.code, error.status)
        body = openai_error(error.code, error.message, status, error.param)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(
        {"detail": error.message, "code": error.code.value},
        status_code=error.status,
        headers=_REFUSAL_HEADERS[error.code],
    )


def openai_error(
    code: str, message: str, status: int, param: str | None = None
) -> dict[str, object]:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    kind = _OPENAI_TYPE.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every ApiError as a JSON refusal."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        path = request.url.path
        return refusal(error, ENDPOINTS.get(path), openai=path.startswith("/v1/"))
