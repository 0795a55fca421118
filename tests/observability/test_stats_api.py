"""/stats agrees across API replicas, and `llm-batcher stats` prints it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import BIN, start_api, start_worker
from tests.support.sse import generate

pytestmark = pytest.mark.system


async def test_stats_agree_across_two_api_processes(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=50)
    api_a, base_a = await start_api(redis_url, key_prefix, tmp_path)
    api_b, base_b = await start_api(redis_url, key_prefix, tmp_path)
    try:
        contexts = [f"@mock ttft_ms={50 * i} itl_ms=0\nstats {i}" for i in range(1, 7)]
        results = await asyncio.gather(
            *(generate(client, base_a if i % 2 else base_b, c) for i, c in enumerate(contexts))
        )
        kind = (await generate(client, base_a, "@mock fail=exit\nfails")).terminal.kind
        report_a = (await client.get(f"{base_a}/stats")).json()
        report_b = (await client.get(f"{base_b}/stats")).json()
        completed = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "llm-batcher"), "stats", "--url", base_b],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        printed = completed.stdout
    finally:
        api_a.stop()
        api_b.stop()
        worker.stop()

    assert all(s.terminal.kind == "done" for s in results) and kind == "error"
    for field in ("requests", "ttft_ms", "total_ms", "queue_ms", "slowest"):
        assert report_a[field] == report_b[field], field
    assert report_a["requests"]["done"] == 6
    assert report_a["requests"]["by_code"] == {"llm_crashed": 1}
    assert report_a["ttft_ms"]["count"] == 6
    assert report_a["ttft_ms"]["max"] >= 300  # the slowest asked for 300 ms to its first token
    totals = [s["total_ms"] for s in report_a["slowest"]]
    assert totals == sorted(totals, reverse=True)
    previews = {s["context_preview"].split("\n")[-1] for s in report_a["slowest"]}
    assert previews == {f"stats {i}" for i in range(1, 7)} | {"fails"}
    assert report_a["workers"] == 1
    assert report_a["slowest"][0]["task_id"] in printed
    assert "ttft" in printed and "p99" in printed
