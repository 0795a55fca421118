"""Idempotency-Key on POST /generate and /v1/*: retries of one request make one task and get its
answer; the key with another request is refused; keys are per client."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import task_ids, task_state
from tests.support.sse import SLOW, after_task, read_sse, words

pytestmark = pytest.mark.system

ANSWER = words(6, "idem")
CONTEXT = SLOW + ANSWER
MODEL = "llm-batcher-mock"
KEY_A = "key-a-0c4f8e2d9b1a7c35"
KEY_B = "key-b-6e2a9d4c1f8b3e07"


async def test_concurrent_retries_share_one_task_and_its_answer(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api, _ = await asyncio.gather(stack.api(), stack.worker())
    first, second = await asyncio.gather(
        *(
            read_sse(
                client,
                "POST",
                f"{api.url}/generate",
                json={"context": CONTEXT},
                headers={"Idempotency-Key": "order-17"},
            )
            for _ in range(2)
        )
    )
    assert first.task_id == second.task_id
    assert first.assert_exact(ANSWER) == second.assert_exact(ANSWER)
    assert await task_ids(redis, stack.prefix) == {first.task_id}
    assert "submitted again with its Idempotency-Key" in api.proc.log()


async def test_a_retry_after_a_hang_up_gets_the_whole_answer(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    """A client that hangs up before its first token does not cancel a keyed task: it said it
    would retry."""
    api = await stack.api()
    url, body = f"{api.url}/generate", {"context": CONTEXT}
    headers = {"Idempotency-Key": "hang-up-then-retry"}
    gone = await read_sse(client, "POST", url, json=body, headers=headers, until=after_task)
    await stack.worker()  # only now: the task was still queued when its client hung up
    retry = await read_sse(client, "POST", url, json=body, headers=headers)
    assert retry.task_id == gone.task_id
    retry.assert_exact(ANSWER)
    assert await task_state(redis, stack.prefix, retry.task_id) == ("done", None)


async def test_the_key_with_another_body_is_refused_and_a_bad_key_too(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api = await stack.api()
    url = f"{api.url}/generate"
    first = await read_sse(
        client, "POST", url, json={"context": "one"}, headers={"Idempotency-Key": "k"},
        until=after_task,
    )  # fmt: skip
    # The same request, formatted otherwise, is the same request.
    same = await read_sse(
        client, "POST", url, content=b'{ "context" : "one" }',
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"}, until=after_task,
    )  # fmt: skip
    assert same.task_id == first.task_id
    other = await read_sse(
        client, "POST", url, json={"context": "two"}, headers={"Idempotency-Key": "k"}
    )
    assert other.status == 422 and other.body["code"] == "idempotency_key_reused"
    too_long = await read_sse(
        client, "POST", url, json={"context": "one"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert too_long.status == 422 and too_long.body["code"] == "invalid_idempotency_key"
    assert await task_ids(redis, stack.prefix) == {first.task_id}


async def test_keys_are_per_client_with_api_keys_on(
    stack: Stack, client: httpx.AsyncClient, redis: Redis
) -> None:
    api, _ = await asyncio.gather(stack.api(api_keys=f"{KEY_A},{KEY_B}"), stack.worker())
    streams = await asyncio.gather(
        *(
            read_sse(
                client,
                "POST",
                f"{api.url}/generate",
                json={"context": CONTEXT},
                headers={"Idempotency-Key": "guessable-1", "Authorization": f"Bearer {key}"},
            )
            for key in (KEY_A, KEY_B)
        )
    )
    assert streams[0].task_id != streams[1].task_id
    for stream in streams:
        stream.assert_exact(ANSWER)
    assert await task_ids(redis, stack.prefix) == {s.task_id for s in streams}


async def test_chat_completions_retried_with_a_key_answer_once(stack: Stack, redis: Redis) -> None:
    api, _ = await asyncio.gather(stack.api(), stack.worker())
    key = {"Idempotency-Key": "chat-1"}
    async with AsyncOpenAI(
        base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=30
    ) as sdk:
        answers = await asyncio.gather(
            *(
                sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hello"}], extra_headers=key
                )
                for _ in range(2)
            )
        )
        assert answers[0].id == answers[1].id
        assert answers[0].choices[0].message.content == "user: Hello\nassistant:"
        assert answers[1].choices[0].message.content == answers[0].choices[0].message.content
        with pytest.raises(openai.UnprocessableEntityError) as reused:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Bye"}], extra_headers=key
            )
        assert reused.value.code == "idempotency_key_reused"
    assert len(await task_ids(redis, stack.prefix)) == 1
