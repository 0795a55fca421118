"""The stream contract of /generate (README, "The stream contract"): its events, their SSE wire
form, an incremental parser, and a check of a whole stream against the contract.

Pure: no I/O and no imports of the API or the worker (only the schema's constants), so that the
API, the `check` command and the tests share one definition of what a stream must look like.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llm_batcher.protocol.keys import MAX_TOKEN_INDEX

TASK_INDEX = -1
"""The index in the `task` event's id: the stream resumes after it, at token 0."""
DONE_FIELDS = frozenset(
    {"task_id", "text", "tokens", "batch_size", "queue_ms", "ttft_ms", "total_ms", "attempt",
     "worker", "batch_id"}
)  # fmt: skip
ERROR_FIELDS = frozenset({"code", "message"})


class EventKind(StrEnum):
    """The event types of a stream; there are no others (pings are SSE comments)."""

    TASK = "task"
    TOKEN = "token"
    DONE = "done"
    ERROR = "error"

    @property
    def is_terminal(self) -> bool:
        return self in (EventKind.DONE, EventKind.ERROR)


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its type (a str when it is not one of the contract's), JSON data, the id
    field it carried (None without one) and its retry field."""

    kind: EventKind | str
    data: dict[str, Any]
    id: str | None = None
    retry: int | None = None

    @property
    def index(self) -> int:
        """The position in the id `<task_id>:<index>`; ValueError without a valid id."""
        if self.id is None:
            raise ValueError(f"a {self.kind} event without an id")
        return parse_event_id(self.id)[1]

    @property
    def is_terminal(self) -> bool:
        return self.kind in (EventKind.DONE, EventKind.ERROR)


# --- ids and builders ---------------------------------------------------------------------------


def event_id(task_id: str, index: int) -> str:
    """The id of a task's event at ``index`` (-1 for the `task` event)."""
    return f"{task_id}:{index}"


def parse_event_id(value: str) -> tuple[str, int]:
    """(task id, index) of `<task_id>:<index>`; ValueError unless the task id is a UUID and the
    index within -1..2**63-1 (an index outside Redis's stream-id range cannot be read back)."""
    task_id, sep, raw_index = value.strip().rpartition(":")
    if not sep or not re.fullmatch(r"-?[0-9]+", raw_index):
        raise ValueError(f"not <task_id>:<index>: {value[:80]!r}")
    index = int(raw_index)
    if not TASK_INDEX <= index <= MAX_TOKEN_INDEX:
        raise ValueError(f"index {index} out of range {TASK_INDEX}..{MAX_TOKEN_INDEX}")
    return str(uuid.UUID(task_id)), index


def task_event(task_id: str, last_index: int, retry_ms: int) -> Event:
    """The first event of a stream; ``last_index`` is the last token the client has (-1: none)."""
    return Event(EventKind.TASK, {"task_id": task_id}, event_id(task_id, last_index), retry_ms)


def token_event(task_id: str, index: int, text: str) -> Event:
    return Event(EventKind.TOKEN, {"text": text}, event_id(task_id, index))


def done_event(data: dict[str, Any]) -> Event:
    """The terminal `done`; ``data`` is the worker's summary (DONE_FIELDS)."""
    return Event(EventKind.DONE, data)


def error_event(code: str, message: str) -> Event:
    return Event(EventKind.ERROR, {"code": code, "message": message})


def encode_data(event: Event) -> str:
    """The event's data field: compact JSON, non-ASCII kept as is (one line, always)."""
    data = event.data
    if event.kind is EventKind.TOKEN and len(data) == 1:  # {"text": ...}: the most frequent
        return '{"text": ' + _dumps_str(data["text"]) + "}"
    return json.dumps(data, ensure_ascii=False)


def encode(event: Event) -> str:
    """The SSE wire frame of one event (CRLF line ends, as the API sends them)."""
    lines = []
    if event.id is not None:
        lines.append(f"id: {event.id}")
    lines.append(f"event: {event.kind}")
    lines.append(f"data: {encode_data(event)}")
    if event.retry is not None:
        lines.append(f"retry: {event.retry}")
    return "\r\n".join(lines) + "\r\n\r\n"


_dumps_str = json.JSONEncoder(ensure_ascii=False).encode


# --- parsing ------------------------------------------------------------------------------------

_KINDS = {kind.value: kind for kind in EventKind}
_LINE_END = re.compile(r"\r\n|\r|\n")


class SseParser:
    """An incremental SSE parser (the WHATWG event-stream rules): feed it text as it arrives.

    Lines end in CRLF, LF or CR, even split across chunks; comments (`: ping`) are counted and
    skipped; several data lines join with a newline; a frame without data dispatches nothing.
    ``last_id`` is the last id seen, what EventSource sends as Last-Event-ID when it reconnects.
    The data of every event must be a JSON object (ValueError otherwise).
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._kind = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_id: str | None = None
        self.comments = 0

    def feed(self, text: str) -> list[Event]:
        """The events completed by ``text``."""
        data = self._buffer + text
        # A CR at the end may be the first half of a CRLF: hold it until the next chunk.
        held = data.endswith("\r")
        lines = _LINE_END.split(data[:-1] if held else data)
        self._buffer = lines.pop() + ("\r" if held else "")  # an unfinished line
        return [event for line in lines if (event := self._line(line)) is not None]

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        kind, data, id_, retry = self._kind or "message", self._data, self._id, self._retry
        self._kind, self._data, self._id, self._retry = "", [], None, None
        if not data:
            return None
        parsed = json.loads("\n".join(data))
        if not isinstance(parsed, dict):
            raise ValueError(f"the data of a {kind} event is not a JSON object: {parsed!r:.80}")
        return Event(_KINDS.get(kind, kind), parsed, id_, retry)

    def close(self) -> list[Event]:
        """The events completed by the end of the stream (a held-back CR ends a line)."""
        return self.feed("\n") if self._buffer.endswith("\r") else []


def parse(text: str) -> list[Event]:
    """The events of a whole SSE body (an unfinished last frame is dropped, as a browser does)."""
    parser = SseParser()
    return parser.feed(text) + parser.close()


# --- the check ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a stream keeps the contract, and if not the first reason why."""

    ok: bool
    reason: str
    task_id: str | None = None
    tokens: list[str] = field(default_factory=list)
    terminal: Event | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def __str__(self) -> str:
        return f"{'OK' if self.ok else 'FAIL'}: {self.reason}"


class _Broken(Exception):
    """A reason the stream breaks the contract (internal to check)."""


def check(
    events: Sequence[Event],
    *,
    expected_text: str | None = None,
    resumed_after: int = TASK_INDEX,
    allow_error: bool = False,
) -> Verdict:
    """Check one connection's events against the stream contract.

    A `task` event with id `<task_id>:<resumed_after>` and a retry, then tokens with ids
    `<task_id>:<resumed_after + 1>`, ... in order, then exactly one terminal event, last. A
    `done` must count every token of the answer and carry the whole text (for a resumed stream,
    the tokens seen must end it); with ``expected_text`` the answer must be that. An `error`
    (code and message) fails the check unless ``allow_error``.
    """
    task_id: str | None = None
    tokens: list[str] = []
    terminal = events[-1] if events and events[-1].is_terminal else None
    try:
        task_id = _check_task(events, resumed_after)
        tokens = _check_tokens(events[1:], task_id, resumed_after)
        terminal = _check_terminal(events, len(tokens))
        reason = _check_answer(terminal, task_id, tokens, resumed_after, expected_text)
        if terminal.kind == EventKind.ERROR and not allow_error:
            raise _Broken(reason)
    except _Broken as broken:
        return Verdict(False, str(broken), task_id, tokens, terminal)
    return Verdict(True, reason, task_id, tokens, terminal)


def _check_task(events: Sequence[Event], resumed_after: int) -> str:
    if not events:
        raise _Broken("the stream has no events")
    first = events[0]
    if first.kind != EventKind.TASK:
        raise _Broken(f"the stream starts with {str(first.kind)!r}, not a task event")
    task_id = first.data.get("task_id")
    if not isinstance(task_id, str):
        raise _Broken(f"the task event has no task_id: {first.data}")
    if first.id != event_id(task_id, resumed_after):
        raise _Broken(
            f"the task event's id is {first.id!r}, not {event_id(task_id, resumed_after)}"
        )
    if first.retry is None:
        raise _Broken("the task event carries no retry")
    return task_id


def _check_tokens(events: Iterable[Event], task_id: str, resumed_after: int) -> list[str]:
    tokens: list[str] = []
    for event in events:
        if event.kind != EventKind.TOKEN:
            if event.is_terminal:
                break
            raise _Broken(f"an event of type {str(event.kind)!r} after the task event")
        expected = event_id(task_id, resumed_after + 1 + len(tokens))
        if event.id != expected:
            raise _Broken(f"token ids are not in order: {event.id!r} where {expected} was due")
        text = event.data.get("text")
        if not isinstance(text, str):
            raise _Broken(f"token {event.id} has no text: {event.data}")
        tokens.append(text)
    return tokens


def _check_terminal(events: Sequence[Event], count: int) -> Event:
    rest = events[1 + count :]
    if not rest:
        raise _Broken(f"the stream ended after {count} tokens without a done or error event")
    if len(rest) > 1:
        kinds = [str(event.kind) for event in rest[:4]]
        raise _Broken(f"events after the terminal one: {kinds}")
    return rest[0]


def _check_answer(
    terminal: Event, task_id: str, tokens: list[str], resumed_after: int, expected: str | None
) -> str:
    data, text = terminal.data, "".join(tokens)
    if terminal.kind == EventKind.ERROR:
        if not isinstance(data.get("code"), str) or not data["code"]:
            raise _Broken(f"the error event has no code: {data}")
        if not isinstance(data.get("message"), str):
            raise _Broken(f"the error event has no message: {data}")
        return f"the task failed: {data['code']}: {data['message']}"
    missing = sorted(DONE_FIELDS - set(data))
    if missing:
        raise _Broken(f"done lacks {', '.join(missing)}")
    if data["task_id"] != task_id:
        raise _Broken(f"done is for task {data['task_id']}, the stream for {task_id}")
    if data["tokens"] != resumed_after + 1 + len(tokens):
        raise _Broken(f"done counts {data['tokens']} tokens, the stream has {len(tokens)}")
    whole = data["text"]
    if (
        not isinstance(whole, str)
        or not whole.endswith(text)
        or (resumed_after == TASK_INDEX and whole != text)
    ):
        raise _Broken(f"done's text {_cut(whole)} does not match the tokens {_cut(text)}")
    if expected is not None and whole != expected:
        raise _Broken(f"the answer is {_cut(whole)}, expected {_cut(expected)}")
    return (
        f"{data['tokens']} tokens from worker {data['worker']} (batch of {data['batch_size']}):"
        f" {_cut(whole)}"
    )


def _cut(text: object, limit: int = 120) -> str:
    """A short one-line repr of ``text``."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
