"""`helm upgrade` with a changed value that rolls the API and worker pods, while clients
stream: no request fails, and the clients whose stream a leaving pod closed resume with
Last-Event-ID and lose no token. The upgrade keeps the generated Redis password."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from kube import CHART_DIR, Release, helm, wait_for
from streams import answer, assert_mock_answer, contexts
from tests.support.sse import Stream

from conftest import Api, wait_ready

pytestmark = pytest.mark.timeout(1200)

CLIENTS = 6
TOKENS = 60  # 1 to 4 s of tokens: several answers per client during the roll


def redis_passwords(release: Release) -> dict[str, str]:
    """The generated Secret of Redis' passwords (`lookup` must keep it across upgrades)."""
    (secret,) = release.core.list_namespaced_secret(
        release.namespace, label_selector=release.selector("redis"), _request_timeout=30
    ).items
    return dict(secret.data)


def pod_names(release: Release) -> set[str]:
    return {p.metadata.name for c in ("api", "worker") for p in release.pods(c)}


async def test_an_upgrade_that_rolls_the_pods_fails_no_stream(
    release: Release, api: Api, client: httpx.AsyncClient
) -> None:
    passwords, before = redis_passwords(release), pod_names(release)
    upgrading = asyncio.Event()
    streams: list[tuple[Stream, str]] = []

    async def one_client(n: int) -> None:
        """Answers one after another until the upgrade is over, then one more."""
        for round_ in range(1000):  # bounded: the upgrade ends in minutes
            last = not upgrading.is_set()
            text = contexts(1, TOKENS, tag=f"upgrade{n}-{round_}-")[0]
            streams.append((await answer(client, api.url, text), text))
            if last:
                return

    upgrading.set()
    clients = [asyncio.create_task(one_client(n)) for n in range(CLIENTS)]
    try:
        stamp = str(int(time.time()))
        await asyncio.to_thread(
            helm, "upgrade", release.name, str(CHART_DIR), "--namespace", release.namespace,
            "--reuse-values", "--set-string", f"api.podAnnotations.k8s-tests/rollout={stamp}",
            "--set-string", f"worker.podAnnotations.k8s-tests/rollout={stamp}",
            "--wait", "--timeout", "10m", timeout_s=660,
        )  # fmt: skip
        upgrading.clear()
        async with asyncio.timeout(300):
            await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()
    await asyncio.to_thread(wait_ready, release)

    for stream, text in streams:
        assert_mock_answer(stream, text)
    resumed = sum(s.connections > 1 for s, _ in streams)
    print(f"MEASURED upgrade answers={len(streams)} resumed={resumed}")
    await asyncio.to_thread(
        wait_for, lambda: not before & pod_names(release), 300, "the old pods to leave"
    )
    assert redis_passwords(release) == passwords, "the upgrade changed the Redis password"
