"""The clients every process makes (protocol/connection.py) read Redis's replies with hiredis's
C parser, commands and pub/sub alike: redis-py falls back to its pure-Python parser, silently,
when hiredis is missing, and the API's CPU per event grows with it (docs/benchmarks.md)."""

from __future__ import annotations

from redis._parsers import _AsyncHiredisParser

from llm_batcher.protocol.connection import make_redis
from llm_batcher.settings import CommonSettings
from tests.support.waiting import eventually


async def test_commands_and_pub_sub_are_parsed_by_hiredis(redis_url: str, key_prefix: str) -> None:
    redis = make_redis(CommonSettings(redis_url=redis_url), max_connections=2, socket_timeout_s=5)
    channel = f"{key_prefix}channel"
    try:
        pubsub = redis.pubsub()
        await pubsub.subscribe(channel)
        assert await redis.publish(channel, "é\n") == 1  # a command's reply, parsed
        messages = []

        async def received() -> bool:
            message = await pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                messages.append(message["data"])
            return bool(messages)

        await eventually(received, 10, "the published message")
        assert messages == ["é\n".encode()]
        assert isinstance(pubsub.connection._parser, _AsyncHiredisParser)
        command_connection = await redis.connection_pool.get_connection()
        try:
            assert isinstance(command_connection._parser, _AsyncHiredisParser)
        finally:
            await redis.connection_pool.release(command_connection)
        await pubsub.aclose()
    finally:
        await redis.aclose()
