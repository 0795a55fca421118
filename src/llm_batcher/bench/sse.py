"""Pure parsing for the load generator: HTTP chunked bodies, SSE events, stamped tokens.

Small and incremental on purpose: the generator parses every event of thousands of streams in one
process, and it must stay cheaper than the server it measures. `parse_events` is the one place
that turns text into events, so another SSE parser can replace this one there.
"""

from __future__ import annotations

from dataclasses import dataclass

STAMP_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched SSE event; ``event`` is "message" when the stream names none."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    """Incremental SSE parser: feed text as it arrives, get the events it completes."""

    def __init__(self) -> None:
        self._pending = ""  # text after the last blank line, line breaks normalised to \n
        self._after_cr = False  # the last feed ended with \r: a \n now is the rest of a \r\n

    def feed(self, text: str) -> list[SseEvent]:
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        self._pending += text.replace("\r\n", "\n").replace("\r", "\n")
        *blocks, self._pending = self._pending.split("\n\n")
        return [event for block in blocks if (event := parse_block(block)) is not None]


def parse_block(block: str) -> SseEvent | None:
    """One event from the lines between two blank lines; None for comments and empty data."""
    name = "message"
    data: list[str] = []
    event_id: str | None = None
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
    if not data:
        return None
    return SseEvent(name, "\n".join(data), event_id)


def parse_events(parser: SseParser, text: str) -> list[SseEvent]:
    """The events that ``text`` completes (the seam where another parser can be plugged in)."""
    return parser.feed(text)


class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 `Transfer-Encoding: chunked` body."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes of the current chunk still to come
        self._need_crlf = False  # the CRLF after a chunk's data (or after the last, empty chunk)
        self._last = False
        self.finished = False  # the whole body, final CRLF included, has been read

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in ``data``; sets ``finished`` at the last (empty) chunk.

        Raises ValueError on a malformed size line."""
        self._buffer += data
        out: list[bytes] = []
        while not self.finished:
            if self._remaining:
                piece = self._buffer[: self._remaining]
                out.append(piece)
                self._buffer = self._buffer[len(piece) :]
                self._remaining -= len(piece)
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(self._buffer) < 2:
                    break
                self._buffer = self._buffer[2:]
                self._need_crlf = False
                self.finished = self._last
                continue
            if not self._read_size():
                break
        return b"".join(out)

    def _read_size(self) -> bool:
        line, sep, rest = self._buffer.partition(b"\r\n")
        if not sep:
            return False
        size = int(line.split(b";")[0].strip(), 16)
        self._buffer = rest
        # The last chunk is empty; trailers are not expected (the server sends none).
        self._last = size == 0
        self._need_crlf = self._last
        self._remaining = size
        return True


def split_stamp(token: str) -> tuple[int | None, str]:
    """(write time in ns, text) of a token from a mock context with `stamp=1`; (None, token) for
    a token without a stamp."""
    head, sep, text = token.partition(STAMP_SEPARATOR)
    if sep and head.isascii() and head.isdigit():
        return int(head), text
    return None, token
