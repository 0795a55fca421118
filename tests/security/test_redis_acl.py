"""The API and the workers run as Redis ACL users of their own that reach only their prefix's
keys and channels, and no dangerous command (protocol/acl.py, SECURITY.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.exceptions
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.operator.lead import give_up_lock, hold_lock
from llm_batcher.operator.pods import DELETION_COST
from llm_batcher.operator.reconcile import Reconciler
from llm_batcher.protocol.acl import user_rules
from llm_batcher.protocol.consumers import consumer_holdings
from llm_batcher.protocol.keys import RELEASED_CONSUMER, WORKER_GROUP, Keys
from llm_batcher.protocol.queue import TaskQueue
from tests.operator.pods import deleted, worker_pod
from tests.security.conftest import REDIS_PASSWORD
from tests.support.processes import Stack
from tests.support.results import submit
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


async def test_the_operator_works_as_the_worker_user(
    secret_redis: EmbeddedRedis, key_prefix: str
) -> None:
    """The chart gives the operator the workers' user: every operator action is allowed to it."""
    async with Redis.from_url(secret_redis.url, password=ADMIN_PASSWORD) as admin:
        await admin.execute_command("ACL", "SETUSER", "llmb-worker", *user_rules(key_prefix, "pw"))
    async with Redis.from_url(user_url(secret_redis, "llmb-worker", "pw")) as redis:
        keys = Keys(key_prefix)
        queue = TaskQueue.create(redis, keys, result_ttl_s=60)
        await queue.claims.ensure_group()
        await submit(queue, "a task")
        assert len(await queue.claims.read_new("w-gone", 1, None)) == 1
        await redis.xgroup_createconsumer(keys.tasks, WORKER_GROUP, "w-stale")
        reconciler = Reconciler(redis, keys, lease_ms=5000, patches_per_s=5, patch_burst=10)
        await reconciler.pod_event(None, worker_pod("w-live"))
        assert await hold_lock(redis, keys, "op", 5000)
        assert await reconciler.pod_event("DELETED", deleted("w-gone")) == 1
        assert await reconciler.sweep(now_ms=10**13) == 1  # w-stale
        assert await reconciler.cost_patches(now_s=0.0) == [
            ("w-live", {"metadata": {"annotations": {DELETION_COST: "0"}}})
        ]
        assert await reconciler.dead_letters() == []
        await give_up_lock(redis, keys, "op")
        assert await consumer_holdings(redis, keys) == {RELEASED_CONSUMER: 1}
