"""A small HTTP server for probes and Prometheus: /healthz, /readyz and /metrics.

The worker's health port, and the separate metrics port of the API or the worker
(LLMB_METRICS_PORT, which keeps /metrics off a public port). The worker has no web framework:
three GET endpoints do not need one, and keeping the worker a plain asyncio program keeps its
signal handling and shutdown order in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from llm_batcher.listeners import inherited
from llm_batcher.metrics import exposition

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


Readiness = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    """Serves a process's state to probes (``readiness``; None: no probes) and its
    ``registry`` to Prometheus (None: no /metrics), on ``host``:``port`` or, given ``fd``, on
    that listening socket inherited from the parent."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness | None,
        registry: CollectorRegistry | None,
        fd: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.fd = fd
        self.readiness = readiness
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        if self.fd is not None:
            self._server = await asyncio.start_server(self._handle, sock=inherited(self.fd))
        else:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = [*request.split(b" ", 2), b"", b""]
            status, ctype, body = self._route(method.decode(), path.decode().split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a probe that hung up or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/healthz" and self.readiness is not None:
            return 200, "application/json", b'{"status":"ok"}\n'
        if path == "/readyz" and self.readiness is not None:
            ready, detail = self.readiness()
            body = json.dumps({"ready": ready, **detail}).encode() + b"\n"
            return (200 if ready else 503), "application/json", body
        if path == "/metrics" and self.registry is not None:
            return 200, CONTENT_TYPE_LATEST, exposition(self.registry)
        return 404, "text/plain", b"not found\n"
