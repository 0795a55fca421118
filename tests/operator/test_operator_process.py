"""`run_operator` in-process: kopf itself, logged in from a kubeconfig to a fake API server on
127.0.0.1 (fake_kube.py), with a real Redis. What reaches the API server is what a cluster would
get: the deletion-cost patches, the dead-letter Event; a DELETED watch event releases the pod's
consumer; the liveness endpoint and /metrics answer."""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.clock import now_ms
from llm_batcher.local.embedded_redis import PORT_ATTEMPTS, free_port
from llm_batcher.operator.pods import DELETION_COST
from llm_batcher.operator.service import DEAD_LETTER_REASON, run_operator
from llm_batcher.protocol.consumers import consumer_holdings
from llm_batcher.protocol.queue import TaskQueue
from llm_batcher.protocol.tasks import StartedTask
from llm_batcher.settings import OperatorSettings
from tests.operator.fake_kube import NAMESPACE, FakeKube, fake_kube
from tests.operator.pods import WORKER_LABELS, deleted, worker_pod
from tests.support.results import make_queue, submit
from tests.support.waiting import eventually

SELECTOR = ",".join(f"{k}={v}" for k, v in WORKER_LABELS.items())


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def _start_operator(
    settings_on: Callable[[int, int], OperatorSettings], redis: Redis, stop: asyncio.Event
) -> tuple[asyncio.Task[None], OperatorSettings]:
    """run_operator on a liveness and a metrics port, once its liveness endpoint answers.

    kopf binds the liveness port itself, from a URL in which port 0 means 80, so this one test
    uses ports free a moment ago (free_port) and, if another process took one before the
    operator bound it, starts again on others."""
    for _ in range(PORT_ATTEMPTS):
        settings = settings_on(free_port(), free_port())
        operator = asyncio.create_task(run_operator(settings, redis, stop))
        liveness = f"http://127.0.0.1:{settings.liveness_port}/healthz"

        async def up(operator: asyncio.Task[None] = operator, url: str = liveness) -> bool:
            return operator.done() or await _answers(url)

        try:
            await eventually(up, 20, "liveness")
        except BaseException:
            stop.set()
            await asyncio.wait_for(operator, 15)
            raise
        if not operator.done():
            return operator, settings
        failure = operator.exception()
        if not isinstance(failure, OSError) or failure.errno != errno.EADDRINUSE:
            operator.result()  # raises what ended it
            raise AssertionError("the operator ended before its liveness endpoint answered")
    raise AssertionError(f"no free ports for the operator in {PORT_ATTEMPTS} attempts")


def _cost_sent(kube: FakeKube, pod: str, cost: str) -> bool:
    wanted = {"metadata": {"annotations": {DELETION_COST: cost}}}
    return (pod, wanted) in kube.patches


async def _dead_letter(queue: TaskQueue) -> str:
    task_id = await submit(queue, "poison")
    claim = (await queue.claims.read_new("llmb-worker-b", 1, None))[0]
    for _ in range(2):  # the second start is past max_attempts: dead-lettered
        started = await queue.tasks.start(
            claim, worker="llmb-worker-b", now_ms=now_ms(), max_attempts=1
        )
    assert not isinstance(started, StartedTask)
    return task_id


async def test_the_operator_acts_through_kopf_on_a_fake_api_server(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(redis, key_prefix)
    await queue.claims.ensure_group()
    for i in range(2):
        await submit(queue, f"task {i}")
    assert len(await queue.claims.read_new("llmb-worker-a", 2, None)) == 2
    # Its worker beats (for the whole test): the sweep leaves it alone until its pod goes.
    await redis.zadd(queue.keys.workers, {"llmb-worker-a": now_ms() + 60_000})

    def settings_on(liveness_port: int, metrics_port: int) -> OperatorSettings:
        return OperatorSettings(
            redis_url=redis_url, key_prefix=key_prefix, namespace=NAMESPACE,
            worker_selector=SELECTOR, worker_deployment="llmb-worker", sweep_s=0.2, cost_s=0.1,
            dead_letter_poll_s=0.1, lock_ttl_ms=1000, liveness_port=liveness_port,
            metrics_port=metrics_port,
        )  # fmt: skip

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    operator: asyncio.Task[None] | None = None
    async with fake_kube() as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        kube.pods = {name: worker_pod(name) for name in ("llmb-worker-a", "llmb-worker-b")}
        try:
            operator, settings = await _start_operator(settings_on, redis, stop)
            await eventually(lambda: _cost_sent(kube, "llmb-worker-a", "2"), 10, "a's cost")
            await eventually(lambda: _cost_sent(kube, "llmb-worker-b", "0"), 10, "b's cost")

            await eventually(lambda: redis.exists(queue.keys.operator_dead_seen), 10, "a look")
            task_id = await _dead_letter(queue)
            await eventually(lambda: len(kube.events) == 1, 10, "the dead-letter Event")
            (event,) = kube.events
            assert event["reason"] == DEAD_LETTER_REASON and event["type"] == "Warning"
            assert task_id in event["message"]
            assert event["involvedObject"]["kind"] == "Deployment"
            assert event["involvedObject"]["name"] == "llmb-worker"
            assert event["involvedObject"]["namespace"] == NAMESPACE

            kube.push("DELETED", deleted("llmb-worker-a"))
            await eventually(
                lambda: _consumer_gone(redis, queue, "llmb-worker-a"), 10, "a's consumer to go"
            )
            assert len(await queue.claims.reclaim_expired("llmb-worker-b", 10, 5000)) == 2
            async with httpx.AsyncClient(trust_env=False) as client:
                metrics = await client.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
            assert 'llm_batcher_operator_consumers_removed_total{why="pod gone"}' in metrics.text
            assert "llm_batcher_operator_leading 1.0" in metrics.text
        finally:
            stop.set()
            if operator is not None:
                await asyncio.wait_for(operator, 15)
            # kopf takes SIGINT and SIGTERM on the loop while it runs: give them back.
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    assert await redis.get(queue.keys.operator) is None  # the lock was given up


async def _consumer_gone(redis: Redis, queue: TaskQueue, consumer: str) -> bool:
    return consumer not in await consumer_holdings(redis, queue.keys)
