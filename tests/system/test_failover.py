"""A Redis failover under load, through Sentinel: real API, workers and mock LLMs on a primary, a
replica and three Sentinels (tests/support/sentinel.py); the primary is SIGKILLed mid-stream.

The processes recover by themselves, new requests succeed once a replica is promoted, and every
stream ends with its exact answer or a clear error. Replication is asynchronous: what the primary
acknowledged but had not yet sent to the replica is lost with it. The test makes that window
certain (the replica is stopped while a few requests are acknowledged) and checks that those
clients get `lost`, not a hang. The figures it prints are the README's (Redis Sentinel).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llm_batcher.protocol.keys import Keys
from tests.support.processes import Api, Stack, stack_on, start_together
from tests.support.sentinel import DATA_PASSWORD, SentinelSet
from tests.support.sse import STREAM_TIMEOUT_S, Stream, read_sse, words
from tests.support.waiting import eventually, while_clients_run

pytestmark = pytest.mark.system

SLOW = "@mock ttft_ms=50 itl_ms=100\n"  # 40 tokens: 4 s, across the failover
FAST = "@mock ttft_ms=0 itl_ms=10\n"
LATE = "@mock ttft_ms=1000 itl_ms=50\n"  # not finished when the primary dies
LOAD_INTERVAL_S = 0.1
"""The steady load: one new request every 100 ms (the rate of arrivals, not a wait)."""
LOAD_MAX = 300
OUTAGE_CODES = {"lost", "redis_unavailable"}


@pytest.fixture
async def sentinel_stack(
    sentinel_set: SentinelSet, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Processes that find Redis through the Sentinels; all stopped afterwards."""
    with stack_on(sentinel_set.url, key_prefix, tmp_path) as processes:
        yield processes


async def _follow(client: httpx.AsyncClient, api: Api, context: str, into: Stream) -> None:
    params = {"context": context}
    await read_sse(client, "GET", f"{api.url}/generate", into=into, params=params)


def _outcome(stream: Stream, body: str) -> str:
    """What a client saw: `done` (the exact answer), `refused <code>`, or `error <code>`."""
    if stream.status != 200:
        assert stream.status == 503 and stream.body["code"] == "redis_unavailable", stream.body
        return "refused redis_unavailable"
    if stream.terminal.kind == "done":
        stream.assert_exact(body)
        return "done"
    error = stream.assert_error()
    assert error["code"] in OUTAGE_CODES, error
    assert body.startswith(stream.text)  # what came before the error is a clean prefix
    return f"error {error['code']}"


@pytest.mark.parametrize("replica_lags", [False, True], ids=["in-sync", "lagging"])
async def test_primary_killed_under_load_the_system_fails_over_without_a_restart(
    sentinel_set: SentinelSet, sentinel_stack: Stack, client: httpx.AsyncClient, replica_lags: bool
) -> None:
    stack, settings = sentinel_stack, sentinel_set.settings()
    del settings["redis_url"]
    api, *_ = await start_together(
        stack.api(**settings), *(stack.worker(window_ms=20, **settings) for _ in range(2))
    )
    await stack.wait_ready(api)
    clients: list[asyncio.Task[None]] = []
    slow = [(f"slow {i} " + words(40, f"s{i}-w"), Stream()) for i in range(4)]
    late = [(f"late {i} " + words(5, f"l{i}-w"), Stream()) for i in range(4)]
    late_ended: list[float] = []
    steady: list[tuple[str, Stream, float]] = []
    stop_load = asyncio.Event()

    async def load() -> None:
        for i in range(LOAD_MAX):
            body, stream = f"steady {i} " + words(5, f"q{i}-w"), Stream()
            steady.append((body, stream, time.monotonic()))
            clients.append(asyncio.create_task(_follow(client, api, FAST + body, stream)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_load.wait(), LOAD_INTERVAL_S)
                return

    async def follow_late(body: str, stream: Stream) -> None:
        await _follow(client, api, LATE + body, stream)
        late_ended.append(time.monotonic())

    loader = asyncio.create_task(load())
    try:
        clients += [asyncio.create_task(_follow(client, api, SLOW + b, s)) for b, s in slow]
        await while_clients_run(
            lambda: all(len(s.tokens) >= 3 for _, s in slow), clients, 20, "3 slow tokens each"
        )
        if replica_lags:
            # The replication window made certain: the replica stands still, cut from the
            # primary (what was sent before the cut waits in its socket), while the primary
            # acknowledges the late requests; then the primary dies.
            sentinel_set.replica.signal(signal.SIGSTOP)
            with sentinel_set.primary.client(DATA_PASSWORD) as primary:
                primary.client_kill_filter(_type="replica")
        clients += [asyncio.create_task(follow_late(b, s)) for b, s in late]
        await while_clients_run(lambda: all(s.events for _, s in late), clients, 10, "late acks")
        assert not any(s.ended for _, s in late)  # acknowledged (`task` event), not finished
        killed_at = time.monotonic()
        sentinel_set.primary.kill()
        sentinel_set.replica.signal(signal.SIGCONT)  # (a no-op when not stopped)
        failover_s = await asyncio.to_thread(sentinel_set.wait_failover)

        # new requests succeed, served by the same processes
        first_ok: list[float] = []

        async def served() -> bool:
            stream = Stream()
            await _follow(client, api, FAST + "after the failover", stream)
            if stream.status == 200 and stream.terminal.kind == "done":
                first_ok.append(time.monotonic() - killed_at)
            return bool(first_ok)

        await eventually(served, 20, "a request to succeed after the failover")
        after = [(f"after {i} " + words(5, f"a{i}-w"), Stream()) for i in range(4)]
        await asyncio.gather(*(_follow(client, api, FAST + b, s) for b, s in after))
        for body, stream in after:
            stream.assert_exact(body)
        stop_load.set()
        await loader
        async with asyncio.timeout(STREAM_TIMEOUT_S):  # every stream ends: none hangs
            await asyncio.gather(*clients)
    finally:
        stop_load.set()
        for task in [loader, *clients]:
            task.cancel()

    assert all(p.popen.poll() is None for p in stack.procs), "a process exited"
    for body, stream in slow:  # acknowledged and replicated long before: exact, across the kill
        stream.assert_exact(body)
    # the late requests: replicated, they are taken over and complete; else their clients
    # are told `lost` (their tasks are absent on the new primary), never left hanging
    late_outcomes = Counter(_outcome(s, b) for b, s in late)
    assert late_outcomes == {"error lost" if replica_lags else "done": len(late)}, late_outcomes
    with sentinel_set.replica.client(DATA_PASSWORD) as new_primary:
        keys = Keys(stack.prefix)
        found = [bool(new_primary.exists(keys.task(s.task_id))) for _, s in late]
    assert found == [not replica_lags] * len(late)
    accepted = [at for _, s, at in steady if at >= killed_at and s.status == 200]
    before = Counter(_outcome(s, b) for b, s, at in steady if at < killed_at)
    during = Counter(_outcome(s, b) for b, s, at in steady if at >= killed_at)
    print(
        f"\nfailover: Sentinels promoted the replica {failover_s:.1f} s after the kill; the API "
        f"accepted requests again {min(accepted, default=0) - killed_at:.1f} s after it, and the "
        f"first one after the promotion was answered {first_ok[0]:.1f} s after it\n"
        f"late requests ({'replica lagging' if replica_lags else 'replica in sync'}): "
        f"{dict(late_outcomes)}, the last ended {max(late_ended) - killed_at:.1f} s after the "
        "kill\n"
        f"steady load ({1 / LOAD_INTERVAL_S:g}/s) sent before the kill: {dict(before)}; "
        f"after it: {dict(during)}"
    )
