"""The API and the workers run as Redis ACL users of their own that reach only their prefix's
keys and channels, and no dangerous command (protocol/acl.py, SECURITY.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.exceptions
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.protocol.acl import user_rules
from tests.security.conftest import REDIS_PASSWORD
from tests.support.processes import Stack
from tests.support.sse import after_tokens, generate, read_sse, resume

pytestmark = pytest.mark.system

ADMIN_PASSWORD = REDIS_PASSWORD


def user_url(server: EmbeddedRedis, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


async def test_api_and_worker_work_as_acl_users_that_reach_only_their_prefix(
    secret_redis: EmbeddedRedis, key_prefix: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    async with Redis.from_url(secret_redis.url, password=ADMIN_PASSWORD) as admin:
        for user in ("llmb-api", "llmb-worker"):
            await admin.execute_command("ACL", "SETUSER", user, *user_rules(key_prefix, user))
        await admin.set("other-deployment:secret", "not yours")
    stack = Stack(user_url(secret_redis, "llmb-api", "llmb-api"), key_prefix, tmp_path)
    try:
        api = await stack.api()
        stack.redis_url = user_url(secret_redis, "llmb-worker", "llmb-worker")
        await stack.worker()
        await stack.wait_ready(api)
        answer = await generate(client, api.url, "as an ACL user")
        answer.assert_exact("as an ACL user")
        slow = "@mock ttft_ms=0 itl_ms=100\nfirst second third"
        again = await read_sse(
            client, "GET", f"{api.url}/generate", params={"context": slow}, until=after_tokens(1)
        )
        await resume(client, api.url, again)
        again.assert_exact("first second third")
        assert (await client.get(f"{api.url}/stats")).status_code == 200
    finally:
        stack.stop()
    assert "NOPERM" not in "".join(p.log() for p in stack.procs), stack.logs()

    # What a stolen API password gives: its own prefix, nothing else.
    async with Redis.from_url(user_url(secret_redis, "llmb-api", "llmb-api")) as stolen:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await stolen.get("other-deployment:secret")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await stolen.keys("*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await stolen.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            await stolen.config_get("requirepass")
