"""Faults under load, seen from the clients: a worker or an API killed with SIGKILL mid-stream,
Redis restarted without persistence. Every client ends with its exact answer or one clear error,
never a hang, a repeated token or a missing one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.keys import Keys
from tests.support.processes import Stack, alive, llm_children, start_together
from tests.support.sse import (
    STREAM_TIMEOUT_S,
    Stream,
    after_tokens,
    generate,
    read_sse,
    resume,
    words,
)
from tests.support.waiting import eventually, while_clients_run

pytestmark = pytest.mark.system


async def test_worker_killed_mid_batch_every_client_still_gets_its_exact_answer(
    stack: Stack, client: httpx.AsyncClient, redis: Redis, key_prefix: str
) -> None:
    # The default lease (5 s): the survivor takes over once the victim's heartbeat lapses.
    api, *workers = await start_together(
        stack.api(), *(stack.worker(window_ms=200, lease_ms=5000) for _ in range(2))
    )
    await stack.wait_ready(api)
    bodies = [f"client {i}: {words(24, f'k{i}-w')}" for i in range(8)]
    contexts = [f"@mock ttft_ms=100 itl_ms=50\n{body}" for body in bodies]
    answers = [Stream() for _ in bodies]
    dropped, killed = asyncio.Event(), asyncio.Event()

    async def follow(i: int) -> None:
        url, params = f"{api.url}/generate", {"context": contexts[i]}
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            if i == 0:  # drops its connection after 3 tokens, comes back after the kill
                await read_sse(
                    client, "GET", url, into=answers[0], until=after_tokens(3), params=params
                )
                dropped.set()
                await killed.wait()
                await resume(client, api.url, answers[0])
            else:
                await read_sse(client, "GET", url, into=answers[i], params=params)

    clients = [asyncio.create_task(follow(i)) for i in range(len(bodies))]
    try:
        await while_clients_run(dropped.is_set, clients, 15, "client 0 to drop its connection")
        owner = await redis.hget(Keys(key_prefix).task(answers[0].task_id), "worker")
        victim = next(w for w in workers if w.id.encode() == owner)
        survivor = next(w for w in workers if w is not victim)
        mocks = llm_children(victim.proc.pid)
        assert mocks, "the victim is not running a batch"
        victim.proc.kill_group()
        killed.set()
        await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()

    dones = [a.assert_exact(body) for a, body in zip(answers, bodies, strict=True)]
    assert answers[0].connections == 2
    assert dones[0]["worker"] == survivor.id and dones[0]["attempt"] == 2, dones[0]
    # a task the victim had not finished was resumed, once, by the survivor
    assert all(d["worker"] == survivor.id or d["attempt"] == 1 for d in dones)
    assert all(d["attempt"] <= 2 for d in dones)
    assert f"from dead worker(s) {victim.id}" in survivor.proc.log()
    # the mock LLM of the killed worker did not outlive it
    await eventually(lambda: not alive(mocks), 10, "the victim's llm-mock to exit")


async def test_api_killed_mid_stream_clients_resume_on_another_api(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    # 4 streams and a long window: one batch, which starts as soon as it is full
    doomed, other, _ = await start_together(
        stack.api(), stack.api(), stack.worker(window_ms=2000, mock_ttft_ms=0, mock_itl_ms=40)
    )
    await stack.wait_ready(doomed)
    contexts = [f"stream {i} " + words(30, f"a{i}-w") for i in range(4)]  # no directive: echo all
    answers = [Stream() for _ in contexts]

    async def follow(i: int) -> None:
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            try:
                if i % 2:
                    body = {"context": contexts[i]}
                    await read_sse(
                        client, "POST", f"{doomed.url}/generate", into=answers[i], json=body
                    )
                else:
                    params = {"context": contexts[i]}
                    await read_sse(
                        client, "GET", f"{doomed.url}/generate", into=answers[i], params=params
                    )
            except httpx.TransportError:
                pass  # the API died under this stream
            assert not answers[i].ended, "the stream ended before the API was killed"
            await resume(client, other.url, answers[i])

    clients = [asyncio.create_task(follow(i)) for i in range(len(contexts))]
    try:
        await while_clients_run(
            lambda: all(len(a.tokens) >= 3 for a in answers), clients, 15, "3 tokens everywhere"
        )
        doomed.proc.kill_group()
        await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()

    for answer, context in zip(answers, contexts, strict=True):
        answer.assert_exact(context)
        assert answer.connections == 2


async def test_redis_restart_under_load_ends_open_streams_and_recovers(
    own_stack: Stack, own_redis: EmbeddedRedis, client: httpx.AsyncClient
) -> None:
    # a window long enough for the 4 requests to make one batch (it starts when it is full)
    api, _ = await start_together(own_stack.api(), own_stack.worker(window_ms=1000))
    await own_stack.wait_ready(api)
    bodies = [f"load {i} " + words(60, f"r{i}-w") for i in range(4)]  # 6 s of tokens
    contexts = [f"@mock ttft_ms=50 itl_ms=100\n{body}" for body in bodies]
    answers = [Stream() for _ in bodies]

    async def follow(i: int) -> None:
        params = {"context": contexts[i]}
        async with asyncio.timeout(STREAM_TIMEOUT_S):  # an error event, never a hang
            await read_sse(client, "GET", f"{api.url}/generate", into=answers[i], params=params)

    clients = [asyncio.create_task(follow(i)) for i in range(len(bodies))]
    try:
        await while_clients_run(
            lambda: all(len(a.tokens) >= 2 for a in answers), clients, 15, "2 tokens everywhere"
        )
        assert not any(a.ended for a in answers)
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)
        await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()

    for answer, body in zip(answers, bodies, strict=True):
        # the answer was lost with Redis' data: what was sent is a clean prefix, then an error
        error = answer.assert_error()
        assert error["code"] in ("lost", "redis_unavailable"), error
        ids = [e.index for e in answer.tokens]
        assert ids == list(range(len(ids)))
        assert body.startswith(answer.text) and len(answer.text) < len(body)

    # the same processes serve again once Redis is back (4 requests: a full batch, no window)
    await own_stack.wait_ready(api)
    again = await asyncio.gather(
        *(generate(client, api.url, f"after restart {i}") for i in range(4))
    )
    for i, answer in enumerate(again):
        done = answer.assert_exact(f"after restart {i}")
        # served at once: the worker did not sit out the rest of the batch Redis forgot
        assert done["total_ms"] < 3000, done
    assert all(p.popen.poll() is None for p in own_stack.procs)
