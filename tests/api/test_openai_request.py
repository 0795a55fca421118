"""The OpenAI-compatible requests and wire formats, without processes: the chat template, the
parameter table (supported, ignored, refused), and the chunks and objects of an answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_batcher import contract
from llm_batcher.api.errors import ApiError
from llm_batcher.api.openai_request import parse_chat, parse_completion
from llm_batcher.api.openai_wire import Answer, ChunkEncoder, Collector
from llm_batcher.protocol.outcomes import ErrorCode

MODEL = "llm-batcher-mock"
TASK = "7f06c2d2-34de-4236-863a-e26748456437"


def chat(**fields: Any) -> bytes:
    fields.setdefault("messages", [{"role": "user", "content": "Hello"}])
    return json.dumps({"model": MODEL, **fields}).encode()


def refusal(body: bytes, parse: Any = parse_chat) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(body)
    return caught.value


def test_the_chat_template_gives_each_message_a_line_and_cues_the_assistant() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}],
        },
    ]
    asked = parse_chat(chat(messages=messages))
    assert (
        asked.context
        == "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Two parts\nassistant:"
    )


def test_a_mock_line_of_the_last_user_message_leads_the_context() -> None:
    messages = [
        {"role": "user", "content": "@mock itl_ms=5\nnot the last"},
        {"role": "user", "content": "@mock ttft_ms=0 extra_tokens=2\nsteered"},
        {"role": "assistant", "content": "ok"},
    ]
    asked = parse_chat(chat(messages=messages))
    assert asked.context == (
        "@mock ttft_ms=0 extra_tokens=2\nuser: @mock itl_ms=5\nnot the last\nuser: steered\n"
        "assistant: ok\nassistant:"
    )


def test_supported_and_ignored_parameters_are_accepted() -> None:
    asked = parse_chat(
        chat(
            stream=True, stream_options={"include_usage": True}, max_tokens=7, stop="END", n=1,
            temperature=0.2, top_p=0.9, seed=1, user="u", presence_penalty=0, frequency_penalty=0,
            logprobs=False, tool_choice="none", response_format={"type": "text"},
        )
    )  # fmt: skip
    assert (asked.stream, asked.include_usage, asked.max_tokens, asked.stop) == (
        True, True, 7, ("END",)
    )  # fmt: skip
    assert parse_chat(chat(max_completion_tokens=3)).max_tokens == 3
    completion = parse_completion(
        json.dumps({"model": MODEL, "prompt": ["one"], "stop": ["a", "b"]}).encode()
    )
    assert (completion.context, completion.stop, completion.endpoint) == (
        "one",
        ("a", "b"),
        "completions",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
    ],
)
def test_refused_parameters_get_400_naming_them(field: str, value: Any) -> None:
    error = refusal(chat(**{field: value}))
    assert error.code is ErrorCode.UNSUPPORTED_PARAMETER and error.status == 400
    assert error.param == field and field in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
        (chat(temperatur=1), "temperatur"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(max_tokens=0), "max_tokens"),
        (b"not json", None),
    ],
)
def test_bad_bodies_get_invalid_body(body: bytes, param: str | None) -> None:
    error = refusal(body)
    assert error.code is ErrorCode.INVALID_BODY and error.param == param, error.message


def test_completion_prompts_must_be_one_non_empty_string() -> None:
    def body(prompt: Any, **more: Any) -> bytes:
        return json.dumps({"model": MODEL, "prompt": prompt, **more}).encode()

    assert refusal(body(["a", "b"]), parse_completion).code is ErrorCode.UNSUPPORTED_PARAMETER
    assert refusal(body(""), parse_completion).code is ErrorCode.MISSING_CONTEXT
    assert refusal(body("x", echo=True), parse_completion).param == "echo"
    assert refusal(body("x", best_of=2), parse_completion).param == "best_of"


def _decode(frames: bytes) -> list[Any]:
    lines = [line for line in frames.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def _answer(endpoint: Any, include_usage: bool = False) -> Answer:
    return Answer(endpoint, TASK, MODEL, 1764412345, prompt_tokens=3, include_usage=include_usage)


def test_a_chat_stream_opens_with_the_role_then_a_chunk_per_token_then_usage_and_done() -> None:
    encoder = ChunkEncoder(_answer("chat", include_usage=True))
    done = contract.done_event({"text": 'Hi "you"', "tokens": 2, "finish_reason": "length"})
    chunks = _decode(
        encoder.frames([contract.task_event(TASK, -1, 1000)])
        + encoder.frames(
            [contract.token_event(TASK, 0, "Hi "), contract.token_event(TASK, 1, '"you"')]
        )
        + encoder.frames([done])
    )
    assert chunks[-1] == "[DONE]"
    role, first, second, finish, usage = chunks[:-1]
    assert {c["id"] for c in chunks[:-1]} == {f"chatcmpl-{TASK}"}
    assert {c["object"] for c in chunks[:-1]} == {"chat.completion.chunk"}
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [first["choices"][0]["delta"], second["choices"][0]["delta"]] == [
        {"content": "Hi "}, {"content": '"you"'}
    ]  # fmt: skip
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5
    }  # fmt: skip
    assert first["usage"] is None


def test_a_completion_stream_has_text_chunks_and_no_usage_unless_asked() -> None:
    encoder = ChunkEncoder(_answer("completions"))
    assert encoder.frames([contract.task_event(TASK, -1, 1000)]) == b""
    done = contract.done_event({"text": "a", "tokens": 1, "finish_reason": "stop"})
    chunks = _decode(encoder.frames([contract.token_event(TASK, 0, "a"), done]))
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["a", ""]
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[1]
    assert chunks[-1] == "[DONE]" and chunks[0]["id"] == f"cmpl-{TASK}"


def test_an_error_ends_a_stream_with_an_error_object_and_no_done() -> None:
    encoder = ChunkEncoder(_answer("chat"))
    chunks = _decode(encoder.frames([contract.error_event("llm_crashed", "the LLM exited")]))
    assert chunks == [
        {
            "error": {
                "message": "the LLM exited",
                "type": "server_error",
                "param": None,
                "code": "llm_crashed",
            }
        }
    ]


def test_a_collected_answer_is_one_object_or_an_error_with_a_status() -> None:
    collector = Collector(_answer("chat"))
    collector.frames([contract.token_event(TASK, 0, "Hi")])
    collector.frames([contract.done_event({"text": "Hi", "tokens": 1, "finish_reason": "stop"})])
    status, body = collector.result()
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
    assert answer["usage"]["total_tokens"] == 4
    failed = Collector(_answer("completions"))
    failed.frames([contract.error_event("timeout", "too slow")])
    assert failed.result()[0] == 504
    assert json.loads(failed.result()[1])["error"]["code"] == "timeout"
    assert Collector(_answer("chat")).result()[0] == 503  # closed for a shutdown
