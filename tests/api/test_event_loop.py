"""The API runs on asyncio's own event loop, named in its uvicorn config (api/server.py) rather
than left for uvicorn to choose: uvicorn picks uvloop whenever it is installed, and uvloop fails
a write to a transport it has closed with a RuntimeError, where asyncio drops the write and
reports the lost connection (ConnectionResetError, which redis-py turns into the ConnectionError
that the API handles). On uvloop, a stream that subscribed while Redis restarted got a 500
instead of its answer (tests/api/test_redis_outage.py failed in about one run in thirty)."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from llm_batcher.api.hub import ResultHub
from llm_batcher.api.server import uvicorn_config
from llm_batcher.protocol.keys import Keys, token_entry_id
from llm_batcher.protocol.results import ResultEntry
from llm_batcher.settings import ApiSettings


def api_loop_runner() -> asyncio.Runner:
    """A runner on the event loop the API's server runs on."""
    factory = uvicorn_config(ApiSettings()).get_loop_factory()
    assert factory is not None
    return asyncio.Runner(loop_factory=factory)


def test_the_api_is_served_on_asyncios_own_loop() -> None:
    with api_loop_runner() as runner:
        loop = runner.get_loop()
        assert type(loop).__module__.startswith("asyncio."), type(loop)


def test_a_stream_subscribing_on_a_connection_lost_while_idle_gets_its_entries(
    redis_url: str, key_prefix: str
) -> None:
    """The hub's pub/sub connection, idle (no stream open), is lost before redis-py noticed:
    the next stream's subscription finds it lost, reconnects, and the stream gets its entries.
    (On uvloop, the send raised RuntimeError, and the request failed.)"""
    keys = Keys(key_prefix)

    async def scenario() -> ResultEntry | str | None:
        redis = Redis.from_url(redis_url, socket_timeout=5)
        hub = ResultHub(redis, keys)
        await hub.start()
        try:
            connection = hub._pubsub.connection
            assert connection is not None and connection.is_connected
            connection._writer.transport.abort()  # type: ignore[union-attr]
            sub = await hub.open_ahead("task", timeout_s=5)
            assert sub is not None, "subscribing failed"
            try:
                await hub.confirmed(sub, timeout_s=5)
                token = {"id": token_entry_id(0), "kind": "token", "text": "after"}
                await redis.publish(keys.result("task"), json.dumps(token))
                while True:  # past any marker, the announced token
                    item = await sub.get(timeout_s=5)
                    if not isinstance(item, str):
                        return item
            finally:
                hub.close(sub)
        finally:
            await hub.stop()
            await redis.aclose()

    with api_loop_runner() as runner:
        entry = runner.run(scenario())
    assert isinstance(entry, ResultEntry)
    assert entry.text == "after"
