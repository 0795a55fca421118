"""/stats agrees across API replicas, and `llm-batcher stats` prints it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import BIN, Stack, base_env, start_api, start_worker
from tests.support.sse import generate

pytestmark = pytest.mark.system


ADMIN_KEY = "admin-5d1f0c7e9a2b4e63"


async def stats_command(env: dict[str, str], *args: str) -> str:
    """What `llm-batcher stats ARGS` prints."""
    completed = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "llm-batcher"), "stats", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return completed.stdout


async def test_stats_agree_across_two_api_processes(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, window_ms=50)
    api_a, base_a = await start_api(redis_url, key_prefix, tmp_path, admin_keys=ADMIN_KEY)
    api_b, base_b = await start_api(redis_url, key_prefix, tmp_path)
    try:
        contexts = [f"@mock ttft_ms={50 * i} itl_ms=0\nstats {i}" for i in range(1, 7)]
        results = await asyncio.gather(
            *(generate(client, base_a if i % 2 else base_b, c) for i, c in enumerate(contexts))
        )
        kind = (await generate(client, base_a, "@mock fail=exit\nfails")).terminal.kind
        report_a = (await client.get(f"{base_a}/stats")).json()
        report_b = (await client.get(f"{base_b}/stats")).json()
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        full = (await client.get(f"{base_a}/stats", headers=admin)).json()
        printed = await stats_command(base_env(redis_url, key_prefix))
        public_printed = await stats_command(base_env(redis_url, key_prefix), "--url", base_a)
        admin_printed = await stats_command(
            base_env(redis_url, key_prefix, admin_keys=ADMIN_KEY), "--url", base_a, "--json"
        )
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
    assert [s["total_ms"] for s in full["slowest"]] == totals
    previews = {s["context_preview"].split("\n")[-1] for s in full["slowest"]}
    assert previews == {f"stats {i}" for i in range(1, 7)} | {"fails"}
    assert report_a["workers"] == 1
    assert full["slowest"][0]["task_id"] in printed  # `llm-batcher stats`: the full view
    assert full["slowest"][0]["task_id"] not in public_printed and "p99" in public_printed
    assert json.loads(admin_printed)["slowest"] == full["slowest"]
    assert "stats 1" in printed
    assert "ttft" in printed and "p99" in printed


async def test_public_stats_name_no_task_and_show_no_context(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """The attack: a victim sends a secret; an attacker reads the slowest task's id and context
    from /stats, then replays the whole answer with that id. Public /stats shows neither."""
    api = await stack.api(admin_keys=ADMIN_KEY)
    await stack.worker()
    victim = await generate(client, api.url, "@mock ttft_ms=300\nmy password is hunter2")
    assert victim.terminal.kind == "done"

    public = await client.get(f"{api.url}/stats")
    assert public.status_code == 200
    assert victim.task_id not in public.text and "hunter2" not in public.text
    (slow,) = public.json()["slowest"]
    assert slow["outcome"] == "done" and slow["batch_size"] == 1 and slow["total_ms"] >= 300
    for wrong in ("Bearer nope", f"Basic {ADMIN_KEY}"):
        other = await client.get(f"{api.url}/stats", headers={"Authorization": wrong})
        assert victim.task_id not in other.text and "hunter2" not in other.text

    admin = await client.get(f"{api.url}/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    (named,) = admin.json()["slowest"]
    assert named["task_id"] == victim.task_id and "hunter2" in named["context_preview"]
