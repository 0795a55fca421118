"""Scaling by load (run.sh's step 4: KEDA on the queue depth, from Prometheus): a burst raises
the worker replicas and they come back down afterwards; with KEDA at minReplicas 0, from zero
and back to zero; with the operator, a scale-down removes idle workers first.

Slow by nature (KEDA polls every 15 s, scales down one pod a minute after 5 calm minutes, and
removes the last worker after a cooldown of 300 s): marked `scaling`, each wait bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from kube import Release, wait_for
from streams import answer, answers, assert_mock_answer, contexts

from conftest import Api

pytestmark = [pytest.mark.scaling, pytest.mark.timeout(3600)]

BURST = 48  # six workers' worth at tasksPerWorker 8
TOKENS = 300  # 6 to 18 s a batch: the queue outlasts KEDA's reaction
SCALE_UP_S = 300
SCALE_DOWN_S = 1500  # 5 calm minutes, one pod a minute, then the cooldown to zero
POLL_S = 1.0


@dataclass
class Busy:
    """One answer of the client that keeps a worker busy while the workers scale down."""

    pod: str
    started: float
    ended: float


@dataclass
class Cycle:
    """What one burst and the scale-down after it showed."""

    start: int
    minimum: int
    peak: int = 0
    down_at: float | None = None  # when the replicas were back at the minimum
    removed: dict[str, float] = field(default_factory=dict)  # pod -> when it was deleted
    busy: list[Busy] = field(default_factory=list)


def min_replicas(release: Release) -> int | None:
    """The autoscaler's minimum, or None when no autoscaler drives the workers."""
    scaled = release.scaled_object()
    if scaled is not None:
        return int(scaled["spec"].get("minReplicaCount", 0))
    hpa = release.worker_hpa()
    return None if hpa is None else int(hpa.spec.min_replicas or 1)


def deletions(release: Release, seen: dict[str, float]) -> None:
    """Record when each worker pod was deleted (its deletion time less its grace period)."""
    for pod in release.pods("worker"):
        meta = pod.metadata
        if meta.deletion_timestamp is not None and meta.name not in seen:
            grace = meta.deletion_grace_period_seconds or 0
            seen[meta.name] = meta.deletion_timestamp.timestamp() - grace


async def watch(release: Release, cycle: Cycle, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cycle.peak = max(cycle.peak, await asyncio.to_thread(release.worker_replicas))
        await asyncio.to_thread(deletions, release, cycle.removed)
        await asyncio.sleep(POLL_S)


async def keep_one_worker_busy(
    client: httpx.AsyncClient, api: Api, cycle: Cycle, stop: asyncio.Event
) -> None:
    """Long answers one after another, each recorded with the pod that ran it."""
    for n in range(10_000):  # bounded by the scale-down's own bound
        if stop.is_set():
            return
        text = contexts(1, TOKENS, tag=f"busy{n}-")[0]
        started = time.time()
        stream = await answer(client, api.url, text)
        data = assert_mock_answer(stream, text)
        pod = str(data["worker"]).rsplit("-", 1)[0]  # worker ids are <pod name>-<pid>
        cycle.busy.append(Busy(pod, started + data["queue_ms"] / 1000, time.time()))


@pytest.fixture(scope="module")
async def cycle(release: Release, api: Api) -> AsyncIterator[Cycle]:
    """A burst, then the scale-down back to the minimum while one worker stays busy."""
    minimum = min_replicas(release)
    if minimum is None:
        pytest.skip("no autoscaler drives the workers (run.sh's step 4 installs KEDA)")
    cycle, stop = Cycle(start=release.worker_replicas(), minimum=minimum), asyncio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=300)) as client:
        watcher = asyncio.create_task(watch(release, cycle, stop))
        try:
            texts = contexts(BURST, TOKENS, tag=f"scale{int(time.time())}-")
            async with asyncio.timeout(SCALE_UP_S + 600):
                for stream, text in zip(await answers(client, api.url, texts), texts, strict=True):
                    assert_mock_answer(stream, text)
            keeper_stop = asyncio.Event()
            keeper = asyncio.create_task(keep_one_worker_busy(client, api, cycle, keeper_stop))
            try:
                await asyncio.to_thread(
                    wait_for, lambda: release.worker_replicas() <= max(minimum, 1),
                    SCALE_DOWN_S, "the workers to scale down",
                )  # fmt: skip
            finally:
                keeper_stop.set()
                async with asyncio.timeout(120):
                    await keeper
            await asyncio.to_thread(
                wait_for, lambda: release.worker_replicas() == minimum, SCALE_DOWN_S,
                f"the workers back at {minimum}",
            )  # fmt: skip
            cycle.down_at = time.time()
        finally:
            stop.set()
            await watcher
    print(f"MEASURED scaling {cycle}")
    yield cycle


def test_a_burst_raises_the_worker_replicas(cycle: Cycle) -> None:
    assert cycle.peak > max(cycle.start, cycle.minimum, 1), cycle


def test_the_workers_come_back_down_afterwards(cycle: Cycle) -> None:
    assert cycle.down_at is not None, cycle


def test_a_scale_down_removes_idle_workers_first(cycle: Cycle, operator: Any) -> None:
    assert cycle.removed, "no worker was removed"
    for pod, removed_at in cycle.removed.items():
        for busy in cycle.busy:
            assert not (busy.pod == pod and busy.started < removed_at < busy.ended), (
                f"{pod} was removed at {removed_at:.1f} while running an answer: {busy}"
            )


async def test_keda_scales_the_workers_from_zero_and_back_to_zero(
    release: Release, api: Api, client: httpx.AsyncClient, cycle: Cycle
) -> None:
    if cycle.minimum != 0 or release.scaled_object() is None:
        pytest.skip("the workers do not scale to zero (KEDA with worker.autoscaling.minReplicas=0)")
    await asyncio.to_thread(  # the last one may still be leaving (an idle worker: a second)
        wait_for, lambda: not release.pods("worker"), 180, "no worker pod at zero replicas"
    )
    text = contexts(1, 10, tag="from-zero-")[0]
    started = time.monotonic()
    stream = await answer(client, api.url, text)
    data = assert_mock_answer(stream, text)
    elapsed_s = time.monotonic() - started
    print(f"MEASURED from_zero_answer_s={elapsed_s:.1f} queue_ms={data['queue_ms']}")
    await asyncio.to_thread(
        wait_for, lambda: release.worker_replicas() == 0 and not release.pods("worker"),
        SCALE_DOWN_S, "the workers back at zero",
    )  # fmt: skip
