"""Log configuration for the entry points: readable text, or one JSON object a line.

Modules log through ``logging.getLogger(__name__)`` and pass ``extra={"task_id": ...}`` (and
``batch_id`` on the worker); both formats show those fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_CONTEXT_FIELDS = ("task_id", "batch_id")


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's per-request lines would drown ours at DEBUG.
    logging.getLogger("uvicorn.access").setLevel(max(logging.WARNING, root.level))
