"""API keys: with LLMB_API_KEYS (or _FILE) set, /generate needs `Authorization: Bearer <key>`, a
task can be resumed only with the key that submitted it, and keys never reach logs or Redis."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher.protocol.keys import Keys
from tests.support.processes import Stack
from tests.support.results import assert_nothing_queued, task_ids
from tests.support.sse import SLOW, after_tokens, read_sse, with_context, words

pytestmark = pytest.mark.system

KEY_A = "key-a-3f9c0d6e1b7a4c28"
KEY_B = "key-b-81e5a2c9d04f7b36"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_without_a_valid_key_generate_answers_401_and_queues_nothing(
    stack: Stack, redis: Redis, client: httpx.AsyncClient, method: str
) -> None:
    api = await stack.api(api_keys=f"{KEY_A},{KEY_B}")
    url = f"{api.url}/generate"
    for headers in ({}, bearer("not-a-key"), {"Authorization": KEY_A}, bearer(KEY_A + "x")):
        refused = await read_sse(client, method, url, headers=headers, **with_context(method, "hi"))
        assert refused.status == 401, headers
        assert refused.body["code"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    await assert_nothing_queued(redis, stack.prefix)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_each_key_streams_its_answer(
    stack: Stack, client: httpx.AsyncClient, method: str
) -> None:
    api = await stack.api(api_keys=f" {KEY_A} , {KEY_B} ")
    await stack.worker()
    for key in (KEY_A, KEY_B):
        answer = f"an answer for {key[:5]}"
        stream = await read_sse(
            client, method, f"{api.url}/generate", headers=bearer(key),
            **with_context(method, answer),
        )  # fmt: skip
        assert stream.status == 200, stream.body
        assert stream.terminal.kind == "done" and stream.text == answer


async def test_keys_from_a_file_work_and_health_metrics_and_stats_stay_open(
    stack: Stack, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    api = await stack.api(api_keys_file=str(key_file))
    await stack.worker()
    await stack.wait_ready(api)
    for path in ("/healthz", "/readyz", "/metrics", "/stats"):
        assert (await client.get(api.url + path)).status_code == 200, path
    assert (await client.get(f"{api.url}/generate", params={"context": "x"})).status_code == 401
    stream = await read_sse(
        client, "GET", f"{api.url}/generate", headers=bearer(KEY_B), params={"context": "filed"}
    )
    assert stream.terminal.kind == "done" and stream.text == "filed"


async def test_a_task_resumes_only_with_the_key_that_submitted_it(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """The attack: another key holder (or anyone, with keys off) who learns a task id replays
    its answer with `Last-Event-ID: <id>:-1`. With keys on, only the submitting key may."""
    api = await stack.api(api_keys=f"{KEY_A},{KEY_B}")
    await stack.worker()
    url = f"{api.url}/generate"
    part = await read_sse(
        client, "GET", url, headers=bearer(KEY_A), params={"context": SLOW + words(6)},
        until=after_tokens(2),
    )  # fmt: skip
    task_id = part.task_id
    replay = {"Last-Event-ID": f"{task_id}:-1"}

    stolen = await read_sse(client, "GET", url, headers={**replay, **bearer(KEY_B)})
    assert stolen.status == 404 and stolen.body["code"] == "unknown_task"
    anonymous = await read_sse(client, "GET", url, headers=replay)
    assert anonymous.status == 401
    unknown = await read_sse(
        client, "GET", url, headers={"Last-Event-ID": f"{task_id[:-1]}0:-1", **bearer(KEY_B)}
    )
    assert stolen.body["detail"].replace(task_id, "") == unknown.body["detail"].replace(
        f"{task_id[:-1]}0", ""
    )  # the same answer as for a task that does not exist

    own = await read_sse(client, "GET", url, headers={**replay, **bearer(KEY_A)})
    assert own.status == 200 and own.terminal.kind == "done"
    assert own.text == words(6)


async def test_keys_are_neither_logged_nor_stored(
    stack: Stack, redis: Redis, client: httpx.AsyncClient
) -> None:
    api = await stack.api(api_keys=KEY_A, log_level="DEBUG")
    await stack.worker()
    stream = await read_sse(
        client, "GET", f"{api.url}/generate", headers=bearer(KEY_A), params={"context": "quiet"}
    )
    assert stream.terminal.kind == "done"
    await read_sse(client, "GET", f"{api.url}/generate", headers=bearer(KEY_B), params={"q": "1"})
    assert KEY_A not in api.proc.log() and KEY_B not in api.proc.log()
    (task_id,) = await task_ids(redis, stack.prefix)
    stored = await redis.hgetall(Keys(stack.prefix).task(task_id))
    assert stored[b"owner"] and all(KEY_A.encode() not in v for v in stored.values())


async def test_stats_can_require_a_key(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api(api_keys=KEY_A, admin_keys=KEY_B, stats_require_key="true")
    assert (await client.get(f"{api.url}/stats")).status_code == 401
    assert (await client.get(f"{api.url}/stats", headers=bearer("nope"))).status_code == 401
    for key in (KEY_A, KEY_B):
        assert (await client.get(f"{api.url}/stats", headers=bearer(key))).status_code == 200
    assert (await client.get(f"{api.url}/healthz")).status_code == 200
