"""The API's pub/sub connection dropped while Redis keeps its data (`CLIENT KILL TYPE pubsub`):
every open stream re-reads its result stream and goes on, with nothing lost or repeated, and
none waits for an announcement that went down with the connection.

Only the API subscribes: a worker learns of a cancellation from the task's state in Redis when it
starts the task (tasks.start), and the API cancels through a script on an ordinary connection, so
no cancellation rides on pub/sub.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.api.hub import RESYNC, ResultHub
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.keys import Keys, token_entry_id
from tests.support.processes import Api, Stack, start_together
from tests.support.results import task_state
from tests.support.sse import STREAM_TIMEOUT_S, Stream, read_sse, sse_events, words
from tests.support.waiting import eventually, while_clients_run

pytestmark = pytest.mark.system

STREAMS = 30
TOKENS = 40  # at 100 ms a token: about 4 s of streaming, across which the kills fall
RECONNECTED = "pub/sub reconnected"


@pytest.fixture
async def own_client(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client on the test's own server (CLIENT KILL there touches no other test)."""
    client = Redis.from_url(own_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def kill_pubsub(redis: Redis, api: Api) -> None:
    """Kill the API's pub/sub connection, then wait until it has reconnected and subscribed."""
    before = api.proc.log().count(RECONNECTED)
    killed = await redis.client_kill_filter(_type="pubsub")
    assert killed == 1, "the API holds one pub/sub connection, whatever the number of streams"
    await eventually(
        lambda: api.proc.log().count(RECONNECTED) > before, 10, "the pub/sub to reconnect"
    )


async def test_a_stream_is_told_to_reread_once_the_hub_has_subscribed_again(
    own_redis: EmbeddedRedis, key_prefix: str
) -> None:
    """Redis unreachable for a moment, its data kept: the hub tells its streams to read Redis
    when it finds the connection gone, and again once it has subscribed anew, since what is
    written between a stream's read and the new subscription is announced to nobody. The first
    reconnection of a process told nothing (redis-py calls the reconnect hook from the second
    connection on, and the hub took that first call for its start): a stream whose last entry
    fell in that gap waited for it until its deadline."""
    keys = Keys(key_prefix)
    redis = Redis.from_url(own_redis.url)
    hub = ResultHub(redis, keys)
    await hub.start()
    try:
        async with hub.subscribe("t1", timeout_s=5) as sub:
            await asyncio.to_thread(own_redis.stop)
            assert await sub.get(timeout_s=10) == RESYNC  # the stream reads Redis: in vain
            await asyncio.to_thread(own_redis.start)
            while not sub.items.empty():  # what the hub said while Redis was away
                sub.items.get_nowait()
            # the task exists (the restart lost it): the hub's liveness sweep has nothing to say
            await redis.hset(keys.task("t1"), "state", "running")
            # Written before the hub has subscribed again (it waits a backoff to reconnect):
            # the stream must hear of it, through a RESYNC once the hub is back.
            token = {"id": token_entry_id(0), "kind": "token", "text": "meanwhile"}
            await redis.publish(keys.result("t1"), json.dumps(token))
            told = await sub.get(timeout_s=10)
            assert told is not None, "the stream was never told to read"
    finally:
        await hub.stop()
        await redis.aclose()


async def test_streams_resync_after_the_pubsub_connection_is_killed(
    own_stack: Stack, own_client: Redis, client: httpx.AsyncClient
) -> None:
    api, _ = await start_together(
        own_stack.api(), own_stack.worker(max_batch=STREAMS, window_ms=500)
    )
    await own_stack.wait_ready(api)
    bodies = [words(TOKENS, f"s{i}-") for i in range(STREAMS)]
    answers = [Stream() for _ in bodies]

    async def follow(i: int) -> None:
        params = {"context": f"@mock ttft_ms=0 itl_ms=100\n{bodies[i]}"}
        await read_sse(client, "GET", f"{api.url}/generate", into=answers[i], params=params)

    clients = [asyncio.create_task(follow(i)) for i in range(STREAMS)]
    try:
        for tokens in (3, 12, 21):  # mid-stream each time: no answer is whole yet
            await while_clients_run(
                lambda n=tokens: all(len(a.tokens) >= n for a in answers),  # type: ignore[misc]
                clients,
                STREAM_TIMEOUT_S,
                f"{tokens} tokens on every stream",
            )
            assert not any(a.ended for a in answers)
            await kill_pubsub(own_client, api)
        # bounded: a stream waiting for announcements lost with the connection would hang
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()

    for answer, body in zip(answers, bodies, strict=True):
        answer.assert_exact(body)  # ids 0..n-1, no repeat, no gap, one `done`, last
        assert answer.connections == 1
    assert f"{STREAMS} stream(s) re-read their results" in api.proc.log()


async def test_streams_that_open_while_the_connection_is_killed_get_their_answers(
    own_stack: Stack, own_client: Redis, client: httpx.AsyncClient
) -> None:
    """Subscriptions sent around the kills: a stream subscribing on a connection that has just
    been killed waits for it to come back, and then has every entry."""
    api, _ = await start_together(own_stack.api(), own_stack.worker(max_batch=STREAMS))
    await own_stack.wait_ready(api)
    bodies = [words(10, f"n{i}-") for i in range(STREAMS)]
    answers = [Stream() for _ in bodies]
    kills = 0

    async def subscribed() -> bool:
        return bool(await own_client.client_list(_type="pubsub"))

    async def kill_again_and_again() -> None:
        """Kill the pub/sub connection each time it subscribes, until every stream has a token."""
        nonlocal kills
        while not all(a.tokens for a in answers) and kills < 100:
            await eventually(subscribed, 10, "a pub/sub connection")
            kills += await own_client.client_kill_filter(_type="pubsub")

    async def follow(i: int) -> None:
        params = {"context": f"@mock ttft_ms=0 itl_ms=50\n{bodies[i]}"}
        await read_sse(client, "GET", f"{api.url}/generate", into=answers[i], params=params)

    killer = asyncio.create_task(kill_again_and_again())
    clients = [asyncio.create_task(follow(i)) for i in range(STREAMS)]
    try:
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            await asyncio.gather(killer, *clients)
    finally:
        for task in (killer, *clients):
            task.cancel()

    for answer, body in zip(answers, bodies, strict=True):
        answer.assert_exact(body)
    assert kills >= 2, "the connection was not killed while the streams opened"
    print(f"MEASURED pubsub_kills_while_opening={kills}")


async def test_a_hang_up_while_the_connection_is_down_still_cancels_and_unsubscribes(
    own_stack: Stack, own_client: Redis, client: httpx.AsyncClient
) -> None:
    """A cancellation does not ride on pub/sub, and the dropped subscription of a stream that
    ended meanwhile is not sent again when the connection comes back."""
    api = await own_stack.api()  # no worker yet: the task stays queued
    url = f"{api.url}/generate"
    keep = Stream()  # a stream that stays open keeps the hub subscribed, and its reader reading
    keeper = asyncio.create_task(read_sse(client, "GET", url, into=keep, params={"context": "k"}))
    try:
        await eventually(lambda: bool(keep.events), 10, "the first stream to open")
        reconnections = api.proc.log().count(RECONNECTED)
        async with client.stream("GET", url, params={"context": "gone"}) as response:
            first = await anext(sse_events(response))
            # killed right before the hang-up: its unsubscription meets a dropped connection,
            # or, when the hub is quicker, the new one
            assert await own_client.client_kill_filter(_type="pubsub") == 1
        gone = Stream([first])
        await eventually(
            lambda: api.proc.log().count(RECONNECTED) > reconnections, 10, "a reconnection"
        )

        async def cancelled() -> bool:
            return await task_state(
                redis=own_client, prefix=own_stack.prefix, task_id=gone.task_id
            ) == ("error", "cancelled")

        await eventually(cancelled, 10, "the task to end with error `cancelled`")
        channel = Keys(own_stack.prefix).result(gone.task_id)

        async def unsubscribed() -> bool:
            return dict(await own_client.pubsub_numsub(channel)).get(channel.encode()) == 0

        await eventually(unsubscribed, 10, "no subscription to the ended stream")
        worker = await own_stack.worker()
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            await keeper
        keep.assert_exact("k")
        assert gone.task_id not in worker.proc.log()
    finally:
        keeper.cancel()
