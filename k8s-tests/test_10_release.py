"""The release answers: `llm-batcher check` through the port-forward, and a burst of parallel
clients, each with its own answer, served in batches."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from kube import Release
from streams import answers, assert_mock_answer, contexts

from conftest import Api

pytestmark = pytest.mark.timeout(1200)

CHECK_TIMEOUT_S = 240  # with KEDA at zero, the first answer waits for a worker to start


def test_the_release_is_ready(release: Release) -> None:
    assert release.ready_pods("api"), "no ready API pod"
    assert release.ready_pods("redis"), "no ready Redis pod"


def test_llm_batcher_check_passes_through_the_port_forward(api: Api) -> None:
    command = [
        sys.executable, "-m", "llm_batcher.cli", "check", api.url, "--expect-mock",
        "--metrics-url", api.metrics_url, "--timeout-s", str(CHECK_TIMEOUT_S),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S + 30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: "), result.stdout


async def test_a_burst_of_16_streams_each_get_their_own_answer_in_batches(
    api: Api, client: httpx.AsyncClient
) -> None:
    texts = contexts(16, tokens=20, tag="burst")
    streams = await answers(client, api.url, texts)
    dones = [assert_mock_answer(s, t) for s, t in zip(streams, texts, strict=True)]
    assert len({d["task_id"] for d in dones}) == 16
    sizes = [d["batch_size"] for d in dones]
    batches = {d["batch_id"] for d in dones}
    print(f"MEASURED burst16 batches={len(batches)} sizes={sorted(sizes)}")
    assert max(sizes) > 1, f"no task shared a batch: {sizes}"
    assert len(batches) < 16, batches
