"""A worker pod deleted in the middle of a batch: every request still completes, exactly. The
tasks it held run again on another worker: after its lease expires (LLMB_LEASE_MS, 5 s) or, with
the operator, within 2 s of the deletion."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import httpx
import pytest
from kube import Release, log_time, wait_for
from streams import answer, assert_mock_answer, contexts
from tests.support.sse import Stream
from tests.support.waiting import eventually

from conftest import Api
from llm_batcher.contract import EventKind

pytestmark = pytest.mark.timeout(900)

WORKERS = 2  # held there: one to lose, one live to take its tasks over
CLIENTS = 8  # two batches of the chart's maxBatch (4): both workers busy
TOKENS = 150  # 3 to 9 s of tokens at the chart's mock timing (20-60 ms a token)
OPERATOR_RESTART_S = 2.0
LEASE_RESTART_BOUND_S = 60.0  # the lease, plus the batch a busy worker finishes first
RUNNING = re.compile(r"batch \S+: running \d+ task\(s\): (.*)")


@dataclass
class Loss:
    """What a deletion cost: the tasks the pod held, and how long after the deletion each one
    ran again on another worker."""

    victim: str
    held: set[str]
    restart_s: dict[str, float]


def batches_running(release: Release, task_ids: set[str]) -> dict[str, set[str]]:
    """Our tasks per worker pod, from the workers' `batch ...: running` log lines."""
    held: dict[str, set[str]] = {}
    for pod, line in release.json_logs("worker"):
        match = RUNNING.match(str(line.get("message", "")))
        if match:
            ours = task_ids & set(match.group(1).split())
            held.setdefault(pod, set()).update(ours)
    return {pod: ids for pod, ids in held.items() if ids}


def reruns(release: Release, victim: str, held: set[str], since: float) -> dict[str, float]:
    """Seconds from ``since`` to the first run of each held task on a pod other than victim."""
    found: dict[str, float] = {}
    for pod, line in release.json_logs("worker"):
        match = RUNNING.match(str(line.get("message", "")))
        if pod == victim or not match or log_time(line) < since:
            continue
        for task_id in held & set(match.group(1).split()):
            found[task_id] = min(found.get(task_id, 1e9), log_time(line) - since)
    return found


def running(streams: list[Stream]) -> bool:
    return all(any(e.kind == EventKind.TOKEN for e in s.events) for s in streams)


async def delete_a_worker_mid_batch(release: Release, api: Api, client: httpx.AsyncClient) -> Loss:
    texts = contexts(CLIENTS, TOKENS, tag=f"loss{int(time.time())}-")
    streams = [Stream() for _ in texts]
    clients = [
        asyncio.create_task(answer(client, api.url, t, s))
        for t, s in zip(texts, streams, strict=True)
    ]
    try:
        await eventually(lambda: running(streams), 240, "every client's first token")
        ids = {s.task_id for s in streams}
        held = await asyncio.to_thread(
            wait_for, lambda: batches_running(release, ids), 30, "our batches in the worker logs"
        )
        victim, victim_ids = max(held.items(), key=lambda item: len(item[1]))
        deleted_at = time.time()
        await asyncio.to_thread(release.delete_pod, victim, 0)  # no drain: a crash
        print(f"deleted worker pod {victim} holding {len(victim_ids)} task(s)")
        async with asyncio.timeout(300):
            done = await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()
    for stream, text in zip(done, texts, strict=True):
        data = assert_mock_answer(stream, text)
        if stream.task_id in victim_ids:
            assert not str(data["worker"]).startswith(victim), data
    restart_s = await asyncio.to_thread(
        wait_for,
        lambda: (r := reruns(release, victim, victim_ids, deleted_at)).keys() == victim_ids and r,
        30,
        "the held tasks' reruns in the worker logs",
    )
    print(f"MEASURED worker_loss_restart_s max={max(restart_s.values()):.2f} {restart_s}")
    return Loss(victim, victim_ids, restart_s)


async def test_deleting_a_worker_mid_batch_every_request_completes(
    release: Release, api: Api, client: httpx.AsyncClient
) -> None:
    with release.workers_held_at(WORKERS):
        loss = await delete_a_worker_mid_batch(release, api, client)
    assert max(loss.restart_s.values()) < LEASE_RESTART_BOUND_S, loss


async def test_with_the_operator_the_tasks_restart_within_2_s(
    release: Release, api: Api, client: httpx.AsyncClient, operator: object
) -> None:
    with release.workers_held_at(WORKERS):
        loss = await delete_a_worker_mid_batch(release, api, client)
    assert max(loss.restart_s.values()) <= OPERATOR_RESTART_S, loss
