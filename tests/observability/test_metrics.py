"""Metrics move as they should during a real run (scrape /metrics before and after)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.metrics import scrape, value
from tests.support.processes import start_api, start_worker
from tests.support.sse import generate

pytestmark = pytest.mark.system


async def test_api_and_worker_metrics_move_during_a_run(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    worker, health_port = await start_worker(redis_url, key_prefix, tmp_path, window_ms=300)
    api, base = await start_api(redis_url, key_prefix, tmp_path)
    worker_metrics = f"http://127.0.0.1:{health_port}/metrics"
    try:
        api_before, worker_before = await scrape(f"{base}/metrics"), await scrape(worker_metrics)
        good = [f"@mock ttft_ms=100 itl_ms=0\nmetric run {i} a b" for i in range(3)]
        poison = "@mock ttft_ms=0 fail=exit\nboom"
        results = await asyncio.gather(*(generate(client, base, c) for c in [*good, poison]))
        refused = await client.get(f"{base}/generate", params={"context": ""})
        api_after, worker_after = await scrape(f"{base}/metrics"), await scrape(worker_metrics)
    finally:
        api.stop()
        worker.stop()

    assert [stream.terminal.kind for stream in results] == ["done", "done", "done", "error"]
    assert refused.status_code == 422

    def api_delta(name: str, **labels: str) -> float:
        return value(api_after, name, **labels) - value(api_before, name, **labels)

    def worker_delta(name: str, **labels: str) -> float:
        return value(worker_after, name, **labels) - value(worker_before, name, **labels)

    requests = "llm_batcher_requests_total"
    assert api_delta(requests, outcome="done", code="", endpoint="generate") == 3
    assert api_delta(requests, outcome="error", code="llm_crashed", endpoint="generate") == 1
    assert api_delta(requests, outcome="rejected", code="missing_context", endpoint="generate") == 1
    assert api_delta("llm_batcher_tokens_sent_total") == 3 * 5  # "metric run N a b": 5 tokens
    assert api_delta("llm_batcher_time_to_first_token_seconds_count") == 3
    assert api_delta("llm_batcher_request_duration_seconds_count") == 3
    assert api_delta("llm_batcher_request_duration_seconds_sum") >= 3 * 0.1
    assert value(api_after, "llm_batcher_open_streams") == 0
    assert value(api_after, "llm_batcher_workers_live") == 1
    assert value(api_after, "llm_batcher_redis_up") == 1

    # One batch of 4 failed on the poison; each task was then retried alone.
    assert worker_delta("llm_batcher_batch_size_count") == 5
    assert worker_delta("llm_batcher_batch_size_sum") == 4 + 4
    assert worker_delta("llm_batcher_llm_failures_total", cause="crashed") == 2
    assert worker_delta("llm_batcher_tasks_retried_total") == 4
    assert worker_delta("llm_batcher_tokens_relayed_total") == 15
    assert worker_delta("llm_batcher_tasks_finished_total", state="done", code="") == 3
    assert worker_delta("llm_batcher_tasks_finished_total", state="error", code="llm_crashed") == 1
    assert worker_delta("llm_batcher_batch_window_wait_seconds_count") == 1
    assert value(worker_after, "llm_batcher_worker_in_flight_tasks") == 0
    assert value(worker_after, "llm_batcher_redis_up") == 1
    # Each process exports only its own kind of metrics.
    assert not any(name.startswith("llm_batcher_batch_") for name, _ in api_after)
    assert not any(name.startswith("llm_batcher_requests") for name, _ in worker_after)
