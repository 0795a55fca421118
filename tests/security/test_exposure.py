"""What a deployment exposes on its public port (issue: /metrics, /docs and /openapi.json shared
it, and the chart's Ingress routed `/` to all of them)."""

from __future__ import annotations

import httpx
import pytest

from llm_batcher.listeners import listener, port_of
from tests.support.processes import Stack

pytestmark = pytest.mark.system


async def test_docs_can_be_turned_off(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api(docs="false")
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await client.get(f"{api.url}{path}")).status_code == 404, path


async def test_metrics_move_to_their_own_port(stack: Stack, client: httpx.AsyncClient) -> None:
    api_socket, worker_socket = listener(), listener()
    api_metrics, worker_metrics = port_of(api_socket), port_of(worker_socket)
    api = await stack.api(metrics_fd=api_socket)
    worker = await stack.worker(metrics_fd=worker_socket)
    # The public port (and the worker's probe port) no longer serve them...
    assert (await client.get(f"{api.url}/metrics")).status_code == 404
    assert (await client.get(f"http://127.0.0.1:{worker.port}/metrics")).status_code == 404
    assert (await client.get(f"http://127.0.0.1:{worker.port}/healthz")).status_code == 200
    # ...their own ports do, and serve nothing else.
    api_side = await client.get(f"http://127.0.0.1:{api_metrics}/metrics")
    assert "llm_batcher_open_streams" in api_side.text
    worker_side = await client.get(f"http://127.0.0.1:{worker_metrics}/metrics")
    assert "llm_batcher_batch_size" in worker_side.text
    assert (await client.get(f"http://127.0.0.1:{api_metrics}/stats")).status_code == 404
    assert (await client.get(f"http://127.0.0.1:{worker_metrics}/readyz")).status_code == 404
