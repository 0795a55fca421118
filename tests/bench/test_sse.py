"""The load generator's parsing: SSE events, chunked bodies, stamped tokens."""

from __future__ import annotations

import pytest

from llm_batcher.bench.sse import ChunkedDecoder, SseEvent, SseParser, parse_events, split_stamp

STREAM = (
    'id: t1:-1\r\nevent: task\r\ndata: {"task_id": "t1"}\r\nretry: 1000\r\n\r\n'
    ": ping\r\n\r\n"
    'id: t1:0\r\nevent: token\r\ndata: {"text": "Hi "}\r\n\r\n'
    'event: done\r\ndata: {"task_id": "t1"}\r\n\r\n'
)
EVENTS = [
    SseEvent("task", '{"task_id": "t1"}', "t1:-1"),
    SseEvent("token", '{"text": "Hi "}', "t1:0"),
    SseEvent("done", '{"task_id": "t1"}', None),
]


def test_a_whole_stream_in_one_piece() -> None:
    assert parse_events(SseParser(), STREAM) == EVENTS


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_stream_cut_anywhere_gives_the_same_events(cut: int) -> None:
    parser = SseParser()
    events = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
    assert events == EVENTS


def test_one_character_at_a_time() -> None:
    parser = SseParser()
    assert [e for ch in STREAM for e in parser.feed(ch)] == EVENTS


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_every_line_ending(newline: str) -> None:
    text = f"event: token{newline}data: a{newline}data: b{newline}{newline}"
    assert SseParser().feed(text) == [SseEvent("token", "a\nb")]


def test_an_event_is_dispatched_only_at_its_blank_line() -> None:
    parser = SseParser()
    assert parser.feed("event: token\ndata: x\n") == []
    assert parser.feed("\n") == [SseEvent("token", "x")]


def test_comments_and_events_without_data_are_not_events() -> None:
    assert SseParser().feed(": ping\n\nevent: lonely\n\nretry: 5\n\n") == []


def test_value_keeps_spaces_after_the_first() -> None:
    assert SseParser().feed("data:  two spaces\ndata:none\n\n") == [
        SseEvent("message", " two spaces\nnone")
    ]


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


BODY = chunked(b"hello ", b"chunked", b" world" * 10)


def test_chunks_in_one_piece() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(BODY) == b"hello chunked" + b" world" * 10
    assert decoder.finished


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_chunks_cut_anywhere(cut: int) -> None:
    decoder = ChunkedDecoder()
    first = decoder.feed(BODY[:cut])
    assert not decoder.finished
    assert first + decoder.feed(BODY[cut:]) == b"hello chunked" + b" world" * 10
    assert decoder.finished


def test_finished_only_after_the_final_line_break() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"3\r\nabc\r\n0\r\n")
    assert not decoder.finished
    decoder.feed(b"\r\n")
    assert decoder.finished


def test_chunk_extensions_are_ignored() -> None:
    assert ChunkedDecoder().feed(b"3;name=value\r\nabc\r\n0\r\n\r\n") == b"abc"


def test_a_bad_size_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        ChunkedDecoder().feed(b"zz\r\nabc\r\n")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("1764412345123456789|Hello ", (1764412345123456789, "Hello ")),
        ("1|a|b", (1, "a|b")),
        ("1|", (1, "")),
        ("Hello ", (None, "Hello ")),
        ("x1|Hello", (None, "x1|Hello")),
        ("|Hello", (None, "|Hello")),
        ("١٢|Hello", (None, "١٢|Hello")),
    ],
)
def test_split_stamp(token: str, expected: tuple[int | None, str]) -> None:
    assert split_stamp(token) == expected
