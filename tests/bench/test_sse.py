"""The load generator's own parsing: chunked bodies and stamped tokens (SSE is the contract's)."""

from __future__ import annotations

import pytest

from llm_batcher.bench.sse import ChunkedDecoder, split_stamp


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
