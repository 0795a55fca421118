"""Pure parsing for the load generator: HTTP chunked bodies and stamped tokens. SSE events are
parsed by the contract module's parser (llm_batcher.contract.SseParser), like everywhere else."""

from __future__ import annotations

STAMP_SEPARATOR = "|"


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
