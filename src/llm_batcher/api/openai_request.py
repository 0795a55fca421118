"""Requests of the OpenAI-compatible endpoints: checking a body and making it one task's context.

Pure: no I/O, so the parameter table (README, "OpenAI-compatible API") tests on its own. A
parameter is supported (it changes the answer), ignored (accepted: the mock answers the same
whatever it says) or refused with 400 `unsupported_parameter`; any other is refused with 400
`invalid_body`, as OpenAI does, so that a typo never passes silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_batcher.api.errors import ApiError
from llm_batcher.protocol.outcomes import ErrorCode

B = TypeVar("B", bound=BaseModel)
MAX_STOPS = 4
ASSISTANT_CUE = "assistant:"
"""The chat template's last line: the model's answer follows it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    """What both endpoints take."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = 1
    # Ignored: sampling does not change what the mock (greedy, an echo) answers.
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Refused unless they say "no": kept here to answer with a clear message.
    logprobs: Any = None
    logit_bias: Any = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None


class CompletionBody(_Common):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


_REFUSED = {
    "logprobs": "logprobs are not available",
    "top_logprobs": "logprobs are not available",
    "logit_bias": "logit_bias is not supported",
    "tools": "tools are not supported",
    "tool_choice": "tools are not supported",
    "functions": "functions are not supported",
    "function_call": "functions are not supported",
    "parallel_tool_calls": "tools are not supported",
    "echo": "echo is not supported",
    "suffix": "suffix is not supported",
}
_NO: tuple[Any, ...] = (None, False, 0, "", [], {}, "none")
"""Values of a refused parameter that ask for nothing (so are accepted)."""


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What a checked request asks for: one task and how to answer it."""

    endpoint: Literal["completions", "chat"]
    model: str
    context: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    stop: tuple[str, ...]


def parse_chat(body: bytes) -> CompletionRequest:
    """A /v1/chat/completions body; ApiError (400) naming the parameter at fault."""
    chat = _validate(ChatBody, body)
    if chat.response_format not in (None, {"type": "text"}):
        raise _unsupported("response_format", "only text answers are available")
    return _request("chat", chat, chat_context(chat.messages), chat.max_completion_tokens)


def parse_completion(body: bytes) -> CompletionRequest:
    """A /v1/completions body; ApiError (400) naming the parameter at fault."""
    completion = _validate(CompletionBody, body)
    prompt = completion.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _unsupported("prompt", "prompt must be a string (or a list of one string)")
        prompt = prompt[0]
    if not prompt:
        raise ApiError(ErrorCode.MISSING_CONTEXT, "prompt is empty", "prompt")
    if completion.best_of not in (None, 1):
        raise _unsupported("best_of", "best_of must be 1")
    return _request("completions", completion, prompt, None)


def chat_context(messages: list[Message]) -> str:
    """The context of a conversation: a line `<role>: <text>` per message, then `assistant:`.
    A `@mock` first line of the last user message leads the context, so directives still
    work."""
    directive = ""
    lines = []
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, message in enumerate(messages):
        text = message.text
        if i == last_user and text.startswith("@mock"):
            directive, _, text = text.partition("\n")
            directive += "\n"
        lines.append(f"{message.role}: {text}")
    return directive + "\n".join([*lines, ASSISTANT_CUE])


def _request(
    endpoint: Literal["completions", "chat"],
    body: _Common,
    context: str,
    max_tokens: int | None,
) -> CompletionRequest:
    for name, reason in _REFUSED.items():
        if getattr(body, name, None) not in _NO:
            raise _unsupported(name, reason)
    if body.n != 1:
        raise _unsupported("n", "n must be 1: one answer per request")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stop) > MAX_STOPS or not all(stop):
        raise ApiError(
            ErrorCode.INVALID_BODY, f"stop takes up to {MAX_STOPS} non-empty strings", "stop"
        )
    return CompletionRequest(
        endpoint=endpoint,
        model=body.model,
        context=context,
        stream=body.stream,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        max_tokens=max_tokens or body.max_tokens,
        stop=tuple(stop),
    )


def _validate(model: type[B], body: bytes) -> B:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"])) or None
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ApiError(ErrorCode.INVALID_BODY, f"invalid request: {problems}", param) from None


def _unsupported(param: str, reason: str) -> ApiError:
    return ApiError(ErrorCode.UNSUPPORTED_PARAMETER, f"{param}: {reason}", param)
