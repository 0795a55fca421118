"""Log configuration for the entry points: readable text, or one JSON object a line.

Modules log through ``logging.getLogger(__name__)`` and pass ``extra={"task_id": ...}`` (and
``batch_id`` on the worker); both formats show those fields.

Lines are written in batches (BufferedStreamHandler): with a line or two per request, one write
and flush per line cost the API about 7% of its CPU under load. A warning or worse is written at
once, with everything before it; other lines within FLUSH_S, by a timer of the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TextIO

_CONTEXT_FIELDS = ("task_id", "batch_id")

FLUSH_S = 0.1
"""Longest time a line below WARNING waits in the buffer."""
MAX_LINES = 256
"""Lines that fill the buffer: it is written at once."""


class BufferedStreamHandler(logging.Handler):
    """Writes formatted lines to a stream in batches: at once for WARNING and worse, when
    MAX_LINES are waiting, or when logged outside an event loop; else within FLUSH_S, from the
    event loop of the line that started the batch. Flushed at exit by logging.shutdown, like
    every handler."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._flush_due = False  # a flush is scheduled on an event loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging must never raise: handleError reports it
            self.handleError(record)
            return
        self._lines.append(line + "\n")
        if record.levelno >= logging.WARNING or len(self._lines) >= MAX_LINES:
            self.flush()
        elif not self._flush_due:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop in this thread: nothing would flush later
                self.flush()
                return
            self._flush_due = True
            loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._flush_due = False
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # the stream is closed or broken: nothing to do
                pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task and batch ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger: message [task_id=… batch_id=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{n}={getattr(record, n)}" for n in _CONTEXT_FIELDS if getattr(record, n, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure(level: str, fmt: str) -> None:
    """Send all logs to stderr in the chosen format (call once, from an entry point)."""
    handler = BufferedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's per-request lines would drown ours at DEBUG.
    logging.getLogger("uvicorn.access").setLevel(max(logging.WARNING, root.level))
