"""The OpenAI-compatible API, driven by the official `openai` SDK against the real API and worker:
models, chat and completions (streaming and not, sync and async clients), max_tokens, stop,
OpenAI-shaped errors, the SDK's own retry on 429, and a client hanging up on a queued task."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from redis.asyncio import Redis

from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.mock.tokens import tokenize
from tests.support.metrics import scrape, value
from tests.support.processes import Api, Stack
from tests.support.results import assert_nothing_queued, queue_length, task_ids, task_state
from tests.support.sse import read_sse
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

MODEL = "llm-batcher-mock"
KEY = "key-openai-5d1e9c3a7b2f4e60"


def sdk(api: Api, key: str = "unused", max_retries: int = 0) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=max_retries, timeout=30)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_models_list_the_deployment_model_and_an_unknown_one_is_404(
    stack: Stack, redis: Redis
) -> None:
    api = await stack.api(model_name="house-model")
    async with sdk(api) as client:
        assert [m.id for m in (await client.models.list()).data] == ["house-model"]
        assert (await client.models.retrieve("house-model")).id == "house-model"
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.models.retrieve("gpt-4o")
        assert unknown.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError) as asked:
            await client.chat.completions.create(model="gpt-4o", messages=user("hi"))
        assert asked.value.code == "model_not_found" and asked.value.param == "model"
    await assert_nothing_queued(redis, stack.prefix)


async def test_chat_answers_whole_and_streamed_with_usage(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api()
    await stack.worker()
    expected = "user: Hello batching world\nassistant:"  # the template, echoed by the mock
    async with sdk(api) as oai:
        whole = await oai.chat.completions.create(
            model=MODEL, messages=user("Hello batching world")
        )
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=user("Hello batching world"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert uuid.UUID(whole.id.removeprefix("chatcmpl-"))  # the task id
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (5, 5)
    assert whole.usage.total_tokens == 10

    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices]
    assert [p for p in pieces if p] == tokenize(expected)  # one chunk per token, in order
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 10
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != whole.id
    # The id names the task: its answer can be read again from /generate, like any task's.
    task_id = whole.id.removeprefix("chatcmpl-")
    replay = await read_sse(
        client, "GET", f"{api.url}/generate", headers={"Last-Event-ID": f"{task_id}:-1"}
    )
    assert replay.terminal.kind == "done" and replay.text == expected


async def test_directives_work_through_chat_and_a_mid_stream_error_ends_the_stream(
    stack: Stack,
) -> None:
    api = await stack.api()
    await stack.worker()
    async with sdk(api) as client:
        steered = await client.chat.completions.create(
            model=MODEL, messages=user("@mock ttft_ms=0 extra_tokens=3\nsteered")
        )
        stream = await client.chat.completions.create(
            model=MODEL, messages=user("@mock ttft_ms=0 fail=exit fail_after=2\nboom"), stream=True
        )
        seen = []
        with pytest.raises(openai.APIError) as failed:
            async for chunk in stream:
                seen.append(chunk)
        with pytest.raises(openai.InternalServerError) as whole_failed:
            await client.completions.create(model=MODEL, prompt="@mock fail=exit\nboom")
    text = steered.choices[0].message.content
    assert text is not None and text.startswith("user: steered\nassistant:")
    assert steered.usage is not None and steered.usage.completion_tokens == len(tokenize(text))
    assert len(tokenize(text)) == 3 + 3  # the echo without the directive line, 3 filler tokens
    assert failed.value.code == "llm_crashed"
    assert seen and seen[0].choices[0].delta.role == "assistant"
    assert whole_failed.value.status_code == 500 and whole_failed.value.code == "llm_crashed"


async def test_completions_with_the_sync_client_honour_max_tokens_and_stop(stack: Stack) -> None:
    api = await stack.api()
    worker = await stack.worker()
    prompt = "one two three four five"

    def run() -> tuple[Any, Any, Any, list[Any]]:
        with OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0) as client:
            capped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
            stopped = client.completions.create(model=MODEL, prompt=prompt, stop=["xyz", "ee f"])
            chat = client.chat.completions.create(model=MODEL, messages=user(prompt), stop="\n")
            streamed = list(
                client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, stream=True)
            )
        return capped, stopped, chat, streamed

    capped, stopped, chat, streamed = await asyncio.to_thread(run)
    assert capped.choices[0].text == "one two "
    assert capped.choices[0].finish_reason == "length"
    assert (capped.usage.prompt_tokens, capped.usage.completion_tokens) == (5, 2)
    assert stopped.choices[0].text == "one two thr"  # cut inside a token, the stop text left out
    assert stopped.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.content == f"user: {prompt}"
    assert [c.choices[0].text for c in streamed] == ["one ", "two ", "three ", ""]
    assert streamed[-1].choices[0].finish_reason == "length"
    # The worker ended the capped tasks itself: nothing past the cap went to Redis.
    samples = await scrape(f"http://127.0.0.1:{worker.port}/metrics")
    assert value(samples, "llm_batcher_tokens_relayed_total") == 2 + 3 + 6 + 3


async def test_refusals_take_openai_shape_and_queue_nothing(
    stack: Stack, redis: Redis, client: httpx.AsyncClient
) -> None:
    api = await stack.api(max_context_bytes=64)
    async with sdk(api) as oai:
        with pytest.raises(openai.BadRequestError) as many:
            await oai.chat.completions.create(model=MODEL, messages=user("x"), n=2)
        with pytest.raises(openai.BadRequestError) as tools:
            await oai.chat.completions.create(
                model=MODEL,
                messages=user("x"),
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            )
        with pytest.raises(openai.APIStatusError) as large:
            await oai.completions.create(model=MODEL, prompt="x" * 65)
    assert (many.value.code, many.value.param) == ("unsupported_parameter", "n")
    assert tools.value.param == "tools" and "not supported" in tools.value.message
    assert large.value.status_code == 413 and large.value.code == "context_too_large"
    no_messages = await client.post(f"{api.url}/v1/chat/completions", json={"model": MODEL})
    assert no_messages.status_code == 400
    error = no_messages.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "messages",
        "invalid_body",
    )
    await assert_nothing_queued(redis, stack.prefix)


async def test_with_api_keys_a_wrong_key_gets_401_and_the_right_one_answers(
    stack: Stack, redis: Redis
) -> None:
    api = await stack.api(api_keys=KEY)
    await stack.worker()
    async with sdk(api, key="wrong") as wrong, sdk(api, key=KEY) as right:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.chat.completions.create(model=MODEL, messages=user("hi"))
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        await assert_nothing_queued(redis, stack.prefix)
        answer = await right.chat.completions.create(model=MODEL, messages=user("keyed"))
    assert refused.value.code == "unauthorized"
    assert answer.choices[0].message.content == "user: keyed\nassistant:"


async def test_a_full_queue_gets_429_with_retry_after_and_the_sdk_retry_succeeds(
    stack: Stack, redis: Redis, client: httpx.AsyncClient
) -> None:
    api = await stack.api(max_queue=1)
    async with client.stream("POST", f"{api.url}/generate", json={"context": "holds the queue"}):

        async def full() -> bool:
            return await queue_length(redis, stack.prefix) == 1

        await eventually(full, 5, "the queue to hold one task")
        refused = await client.post(
            f"{api.url}/v1/chat/completions", json={"model": MODEL, "messages": user("x")}
        )
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["type"] == "rate_limit_error"
        async with sdk(api, max_retries=2) as oai:
            call = asyncio.create_task(
                oai.chat.completions.create(model=MODEL, messages=user("retried"))
            )

            async def sdk_refused() -> bool:
                samples = await scrape(f"{api.url}/metrics")
                labels = {"outcome": "rejected", "code": "queue_full", "endpoint": "chat"}
                return value(samples, "llm_batcher_requests_total", **labels) >= 2

            await eventually(sdk_refused, 10, "the SDK's first attempt to be refused")
            await stack.worker()  # the queue drains; the SDK retries after Retry-After
            answer = await call
    assert answer.choices[0].message.content == "user: retried\nassistant:"
    samples = await scrape(f"{api.url}/metrics")
    done = {"outcome": "done", "code": ""}
    assert value(samples, "llm_batcher_requests_total", endpoint="chat", **done) == 1
    assert value(samples, "llm_batcher_requests_total", endpoint="completions", **done) == 0


async def test_redis_unavailable_is_503_in_openai_shape(
    own_redis: EmbeddedRedis, own_stack: Stack
) -> None:
    api = await own_stack.api()
    own_redis.stop()
    async with sdk(api) as client:
        with pytest.raises(openai.InternalServerError) as down:
            await client.chat.completions.create(model=MODEL, messages=user("while down"))
    assert down.value.status_code == 503 and down.value.code == "redis_unavailable"
    assert int(down.value.response.headers["retry-after"]) > 0


async def test_a_client_hanging_up_cancels_its_queued_task(stack: Stack, redis: Redis) -> None:
    api = await stack.api()  # no worker: tasks stay queued

    async def cancelled(task_id: str) -> bool:
        return await task_state(redis, stack.prefix, task_id) == ("error", "cancelled")

    async with sdk(api) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=user("never run"), stream=True
        )
        first = await anext(aiter(stream))  # the role chunk, sent once the task is queued
        await stream.close()
        streamed_id = first.id.removeprefix("chatcmpl-")
        await eventually(lambda: cancelled(streamed_id), 5, "the streamed task to be cancelled")

        call = asyncio.create_task(client.completions.create(model=MODEL, prompt="never either"))

        async def queued() -> bool:
            return await queue_length(redis, stack.prefix) == 1

        await eventually(queued, 5, "the second task to be queued")
        (whole_id,) = await task_ids(redis, stack.prefix) - {streamed_id}
        call.cancel()
        await eventually(lambda: cancelled(whole_id), 5, "the waiting task to be cancelled")
    assert await queue_length(redis, stack.prefix) == 0


async def test_sixteen_concurrent_sdk_streams_each_get_their_answer_in_batches(
    stack: Stack,
) -> None:
    api = await stack.api()
    worker = await stack.worker(max_batch=4, window_ms=300)
    await stack.wait_ready(api)

    async def ask(client: AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=user(f"question {i} alpha beta"), stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async with sdk(api) as client:
        answers = await asyncio.gather(*(ask(client, i) for i in range(16)))
    assert answers == [f"user: question {i} alpha beta\nassistant:" for i in range(16)]
    samples = await scrape(f"http://127.0.0.1:{worker.port}/metrics")
    assert value(samples, "llm_batcher_batch_size_sum") == 16
    assert value(samples, "llm_batcher_batch_size_count") < 16  # they shared batches
