"""The stream-contract module: ids, wire frames, the incremental parser, and the check, which
passes a well-formed stream and fails each way of breaking the contract with its reason."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llm_batcher.contract import (
    DONE_FIELDS,
    Event,
    EventKind,
    SseParser,
    check,
    done_event,
    encode,
    error_event,
    event_id,
    parse,
    parse_event_id,
    task_event,
    token_event,
)
from llm_batcher.protocol.keys import MAX_TOKEN_INDEX

TASK = "7f06c2d2-34de-4236-863a-e26748456437"


def stream(tokens: list[str], *, first: int = 0, **done: object) -> list[Event]:
    """A well-formed stream of ``tokens`` (indexes from ``first``), with ``done`` overrides."""
    data: dict[str, object] = dict.fromkeys(DONE_FIELDS, 1)
    data.update(task_id=TASK, text="".join(tokens), tokens=first + len(tokens), worker="w-1")
    data.update(done)
    events = [task_event(TASK, first - 1, 1000)]
    events += [token_event(TASK, first + i, text) for i, text in enumerate(tokens)]
    return [*events, done_event(data)]


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [-1, 0, 7, MAX_TOKEN_INDEX])
def test_an_event_id_round_trips(index: int) -> None:
    assert parse_event_id(event_id(TASK, index)) == (TASK, index)


@pytest.mark.parametrize(
    "value",
    ["", TASK, f"{TASK}:", f"{TASK}:x", f"{TASK}:-2", f"{TASK}:{MAX_TOKEN_INDEX + 1}", "nope:3",
     f"{TASK}:1.5", f"{TASK}:+1", f"{TASK}:٣", ":0"],
)  # fmt: skip
def test_a_malformed_event_id_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(value)


def test_an_event_id_is_read_with_surrounding_space_and_any_uuid_spelling() -> None:
    assert parse_event_id(f" {TASK.upper()}:3 ") == (TASK, 3)


# --- wire frames and the parser ---------------------------------------------------------------


def test_encode_gives_the_frames_the_api_sends() -> None:
    assert encode(task_event(TASK, -1, 1000)) == (
        f'id: {TASK}:-1\r\nevent: task\r\ndata: {{"task_id": "{TASK}"}}\r\nretry: 1000\r\n\r\n'
    )
    assert encode(error_event("timeout", "late")) == (
        'event: error\r\ndata: {"code": "timeout", "message": "late"}\r\n\r\n'
    )


HOSTILE_TEXT = 'a\nb\r\nc\rd "q" \\ data: x\n\nevent: done\n: not a comment 🚀 \u2028\x00'


def test_encode_then_parse_gives_the_events_back() -> None:
    events = stream(["one ", HOSTILE_TEXT, "é"])
    assert parse("".join(encode(e) for e in events)) == events


def test_the_parser_takes_any_chunking_and_line_end() -> None:
    events = stream(["a ", "b ", "c"])
    body = "".join(encode(e) for e in events)
    for line_end in ("\r\n", "\n", "\r"):
        wire = body.replace("\r\n", line_end)
        for size in (1, 2, 3, 7, len(wire)):
            parser = SseParser()
            got = [e for i in range(0, len(wire), size) for e in parser.feed(wire[i : i + size])]
            assert got + parser.close() == events, (line_end, size)


def test_comments_pings_and_multi_line_data() -> None:
    parser = SseParser()
    got = parser.feed(': ping\n\nid: x:1\nevent: token\ndata: {"text":\ndata:  "a"}\n\n: ping\n')
    assert got == [Event("token", {"text": "a"}, "x:1")]
    assert parser.comments == 2
    assert parser.last_id == "x:1"


def test_the_parser_follows_the_sse_field_rules() -> None:
    text = (
        "event: task\nid: a\nretry: 12x\ndata: {}\n\n"  # a bad retry is ignored
        "id\nevent: token\n\n"  # a field without a colon: an empty id; no data: no event
        "data:{}\nunknown: field\n\n"  # no space after the colon; no event type: message
    )
    parser = SseParser()
    assert parser.feed(text) == [Event("task", {}, "a"), Event("message", {})]
    assert parser.last_id == ""


def test_an_unfinished_frame_is_not_an_event() -> None:
    assert parse('event: done\ndata: {"text": ""}\n') == []


@pytest.mark.parametrize("data", ["[1]", "3", "not json", '"s"', ""])
def test_data_that_is_not_a_json_object_is_an_error(data: str) -> None:
    with pytest.raises(ValueError):
        parse(f"event: token\ndata: {data}\n\n")


def test_event_kinds_of_the_contract_are_enum_members() -> None:
    (known, unknown) = parse("event: done\ndata: {}\n\nevent: other\ndata: {}\n\n")
    assert known.kind is EventKind.DONE and known.is_terminal
    assert unknown.kind == "other" and not unknown.is_terminal


# --- the check --------------------------------------------------------------------------------


def test_a_well_formed_stream_passes() -> None:
    verdict = check(stream(["Hello ", "world"]), expected_text="Hello world")
    assert verdict.ok, verdict
    assert verdict.task_id == TASK
    assert verdict.tokens == ["Hello ", "world"]
    assert verdict.terminal is not None and verdict.terminal.kind == EventKind.DONE
    assert str(verdict) == "OK: 2 tokens from worker w-1 (batch of 1): 'Hello world'"


def test_an_empty_answer_passes() -> None:
    assert check(stream([]), expected_text="").ok


def test_a_resumed_stream_passes_with_the_index_it_resumed_after() -> None:
    events = stream(["c ", "d"], first=2, text="a b c d")
    assert check(events, resumed_after=1, expected_text="a b c d").ok
    assert not check(events).ok


def test_an_error_stream_passes_only_when_allowed() -> None:
    events = [task_event(TASK, -1, 1000), token_event(TASK, 0, "a"), error_event("x", "boom")]
    assert not check(events).ok
    assert str(check(events)) == "FAIL: the task failed: x: boom"
    allowed = check(events, allow_error=True)
    assert allowed.ok and allowed.tokens == ["a"], allowed
    assert allowed.terminal == error_event("x", "boom")


def _replace(events: list[Event], i: int, **changes: object) -> list[Event]:
    events = list(events)
    events[i] = dataclasses.replace(events[i], **changes)  # type: ignore[arg-type]
    return events


GOOD = stream(["a ", "b ", "c"])
DONE = GOOD[-1].data


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([], "no events"),
        (GOOD[1:], "starts with 'token'"),
        (_replace(GOOD, 0, data={}), "no task_id"),
        (_replace(GOOD, 0, id=f"{TASK}:0"), "task event's id"),
        (_replace(GOOD, 0, retry=None), "no retry"),
        (_replace(GOOD, 2, id=f"{TASK}:2"), "not in order"),
        (_replace(GOOD, 2, id=None), "not in order"),
        ([*GOOD[:2], GOOD[1], *GOOD[2:]], "not in order"),  # a repeated token
        ([GOOD[0], GOOD[2], *GOOD[3:]], "not in order"),  # a lost token
        (_replace(GOOD, 1, data={"text": 3}), "has no text"),
        (_replace(GOOD, 1, kind="message"), "of type 'message'"),
        (GOOD[:-1], "without a done or error event"),
        ([*GOOD, GOOD[-1]], "after the terminal one"),
        ([*GOOD, error_event("x", "y")], "after the terminal one"),
        ([*GOOD[:2], GOOD[-1], *GOOD[2:-1]], "after the terminal one"),
        (_replace(GOOD, -1, data={**DONE, "tokens": 2}), "counts 2 tokens"),
        (_replace(GOOD, -1, data={**DONE, "text": "a b d"}), "does not match the tokens"),
        (_replace(GOOD, -1, data={**DONE, "task_id": "other"}), "done is for task other"),
        (_replace(GOOD, -1, data={"text": "a b c", "tokens": 3}), "done lacks attempt"),
        ([*GOOD[:-1], error_event("", "m")], "has no code"),
        ([*GOOD[:-1], Event(EventKind.ERROR, {"code": "c"})], "has no message"),
    ],
)
def test_a_broken_stream_fails_with_its_reason(events: list[Event], reason: str) -> None:
    verdict = check(events, allow_error=True)
    assert not verdict.ok
    assert reason in verdict.reason, verdict.reason
    assert str(verdict).startswith("FAIL: ") and "\n" not in str(verdict)


def test_a_wrong_answer_fails_against_the_expected_text() -> None:
    verdict = check(GOOD, expected_text="a b d")
    assert not verdict.ok and "expected 'a b d'" in verdict.reason


def test_the_verdict_line_stays_one_short_line() -> None:
    text = "x\n" * 500
    verdict = check(stream([text]), expected_text="y")
    assert "\n" not in str(verdict) and len(str(verdict)) < 400
    assert json.loads(json.dumps(verdict.tokens)) == [text]
