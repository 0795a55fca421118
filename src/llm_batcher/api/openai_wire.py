"""OpenAI's wire formats of a task's stream: chunks for `stream: true`, one object otherwise.

Encoders of stream.TaskStream (the stream logic stays there, once, for every format). Pure: they
turn the contract's events into bytes and read nothing.

- `ChunkEncoder` (`stream: true`): a `data: {chunk}` line per token as it comes (a chat stream
  opens with a chunk carrying `role: assistant`, sent as soon as the task is queued), then a
  chunk with `finish_reason`, a usage chunk with empty `choices` if `stream_options.include_usage`
  asked for one, and `data: [DONE]`. A task that ends with an error ends the stream with
  `data: {"error": {...}}` and no `[DONE]` (the openai SDK raises it as an APIError).
- `Collector` (`stream: false`): keeps the terminal event and makes the response from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from llm_batcher import contract
from llm_batcher.api.errors import openai_error
from llm_batcher.api.stream import PING
from llm_batcher.mock.tokens import tokenize
from llm_batcher.protocol.outcomes import ErrorCode

DONE_LINE = "data: [DONE]\n\n"
_dumps = partial(json.dumps, ensure_ascii=False, separators=(",", ":"))
_TEXT = "\x00text\x00"  # stands for a token's text in a pre-encoded chunk

_ERROR_STATUS = {
    ErrorCode.TIMEOUT: 504,
    ErrorCode.REDIS_UNAVAILABLE: 503,
    ErrorCode.REDIS_FULL: 503,
}
"""The status of a non-streaming answer whose task ended with an error (else 500)."""


def prompt_tokens(context: str) -> int:
    """Tokens of a context as the mock cuts its echo: each run of non-space characters with the
    white space after it (long runs in pieces of 16 characters)."""
    return len(tokenize(context))


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """What every object of one answer says about it."""

    endpoint: Literal["completions", "chat"]
    task_id: str
    model: str
    created: int  # seconds since the epoch
    prompt_tokens: int
    include_usage: bool = False

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.endpoint == 'chat' else 'cmpl'}-{self.task_id}"

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def choice(self, text: str | None, finish_reason: str | None, *, whole: bool) -> dict[str, Any]:
        """Choice 0 of a chunk (a delta) or of the whole answer (``whole``)."""
        choice: dict[str, Any] = {"index": 0}
        if self.endpoint == "completions":
            choice["text"] = text or ""
        elif whole:
            choice["message"] = {"role": "assistant", "content": text or ""}
        else:
            choice["delta"] = {} if text is None else {"content": text}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        return choice


class ChunkEncoder:
    """`stream: true`: OpenAI's chunks, as SSE `data:` lines."""

    ping = PING

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.object = "chat.completion.chunk" if answer.endpoint == "chat" else "text_completion"
        # A token's chunk is the same JSON but for its text: encode the rest once.
        template = self._line(answer.choice(_TEXT, None, whole=False))
        self._before, self._after = template.split(_dumps(_TEXT), 1)

    def frames(self, events: list[contract.Event]) -> bytes:
        lines = []
        for event in events:
            if event.kind == contract.EventKind.TOKEN:
                text = _dumps(event.data["text"])
                lines.append(f"{self._before}{text}{self._after}")
            elif event.kind == contract.EventKind.TASK:
                if self.answer.endpoint == "chat":
                    choice = self.answer.choice(None, None, whole=False)
                    choice["delta"] = {"role": "assistant", "content": ""}
                    lines.append(self._line(choice))
            elif event.kind == contract.EventKind.DONE:
                lines += self._ending(event.data)
            else:
                error = openai_error(event.data["code"], event.data["message"], 500)
                lines.append(f"data: {_dumps(error)}\n\n")
        return "".join(lines).encode()

    def _ending(self, done: dict[str, Any]) -> list[str]:
        reason = done.get("finish_reason", "stop")
        lines = [self._line(self.answer.choice(None, reason, whole=False))]
        if self.answer.include_usage:
            chunk = self.answer.head(self.object)
            chunk["choices"] = []
            chunk["usage"] = usage(self.answer.prompt_tokens, done["tokens"])
            lines.append(f"data: {_dumps(chunk)}\n\n")
        lines.append(DONE_LINE)
        return lines

    def _line(self, choice: dict[str, Any]) -> str:
        chunk = self.answer.head(self.object)
        chunk["choices"] = [choice]
        if self.answer.include_usage:
            chunk["usage"] = None  # as OpenAI: every chunk has it, the last one filled in
        return f"data: {_dumps(chunk)}\n\n"


class Collector:
    """`stream: false`: the whole answer as one object, made from the terminal event."""

    ping = b""  # the response starts when the answer is complete: nothing to keep open

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.terminal: contract.Event | None = None

    def frames(self, events: list[contract.Event]) -> bytes:
        for event in events:
            if event.is_terminal:
                self.terminal = event
        return b""

    def result(self) -> tuple[int, bytes]:
        """The status and JSON body of the response."""
        body: dict[str, Any]
        terminal = self.terminal
        if terminal is None:  # the stream was closed for a shutdown
            status = 503
            body = openai_error(ErrorCode.SHUTTING_DOWN, "this API replica is shutting down", 503)
        elif terminal.kind == contract.EventKind.ERROR:
            code = terminal.data["code"]
            status = _ERROR_STATUS.get(code, 500)
            body = openai_error(code, terminal.data["message"], status)
        else:
            status, done = 200, terminal.data
            obj = "chat.completion" if self.answer.endpoint == "chat" else "text_completion"
            body = self.answer.head(obj)
            reason = done.get("finish_reason", "stop")
            body["choices"] = [self.answer.choice(done["text"], reason, whole=True)]
            body["usage"] = usage(self.answer.prompt_tokens, done["tokens"])
        return status, _dumps(body).encode()
