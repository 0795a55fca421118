"""Contexts that try to break framing, shells and parsers come back byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support.processes import running_worker
from tests.support.results import assert_complete_answer, make_queue, submit, wait_result

pytestmark = pytest.mark.system

_WORDS = "lorem ipsum, dolor sit amet; consectetur\tadipiscing\nelit "
BIG_BODY = (_WORDS * (65536 // len(_WORDS) + 1))[:65536]


def hostile_contexts(marker: Path) -> dict[str, tuple[str, str]]:
    """name -> (context, expected answer)."""
    same = {
        "newlines": "line one\nline two\n\n\nline five\n",
        "crlf": "windows\r\nline\r\n\r\nend\r",
        "quotes": 'she said "hi" and \'bye\' and """triple"""',
        "backslashes": "C:\\path\\to\\file \\n is not a newline \\\\ \\u0000 \\",
        "shell": f"$(touch {marker}) `touch {marker}` ; touch {marker} && $(touch /tmp/pwned)",
        "backticks": "```python\nprint('hi')\n``` and `inline`",
        "emoji": "party 🎉🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
        "rtl": "مرحبا بالعالم שלום עולם \u202ereversed\u202c mixed",
        "nul": "nul\x00inside\x00\x00end",
        "controls": "bell\x07 esc\x1b[31m red\x1b[0m del\x7f form\x0cfeed",
        "unicode_breaks": "line\u2028sep\u2029para\x85next\u00a0nbsp",
        "sse": "data: x\n\nevent: done\n\n",
        "json_line": '{"index": 0, "token": "fake"}\n{"index": 9, "finish": "stop"}',
        "mockery": "@mockery ttft_ms=999999 fail=exit\nnot a directive",
        "mock_later": "first line\n@mock fail=exit\n",
        "empty": "",
        "only_spaces": "   \t  ",
    }
    cases = {name: (text, text) for name, text in same.items()}
    cases["directive_crlf"] = ("@mock ttft_ms=0 itl_ms=0\r\nbody after a CRLF", "body after a CRLF")
    cases["big_64k"] = (f"@mock ttft_ms=0 itl_ms=0\n{BIG_BODY}", BIG_BODY)
    return cases


async def test_hostile_contexts_round_trip_byte_for_byte(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    pwned = Path("/tmp/pwned")
    pwned_before = pwned.exists()  # noqa: ASYNC240
    cases = hostile_contexts(marker)
    queue = make_queue(redis, key_prefix)
    # The 64 KiB echo is longer than the default LLMB_MAX_TOKENS.
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=20, max_tokens=1_000_000):
        ids = {name: await submit(queue, context) for name, (context, _) in cases.items()}
        results = {name: await wait_result(queue, task_id) for name, task_id in ids.items()}

    failures = []
    for name, (_, expected) in cases.items():
        try:
            assert_complete_answer(results[name], expected)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert failures == []
    big = "".join(e.text for e in results["big_64k"] if e.kind == "token")
    assert big.encode() == BIG_BODY.encode()
    assert not marker.exists()
    if not pwned_before:
        assert not pwned.exists()  # noqa: ASYNC240


async def test_long_words_are_cut_into_tokens_that_join_back(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    sizes = [1, 16, 17, 4096]
    queue = make_queue(redis, key_prefix)
    async with running_worker(redis_url, key_prefix, tmp_path, window_ms=0):
        ids = [await submit(queue, "é" * size) for size in sizes]
        results = [await wait_result(queue, task_id) for task_id in ids]
    for size, entries in zip(sizes, results, strict=True):
        done = assert_complete_answer(entries, "é" * size)
        assert done.data is not None
        assert done.data["tokens"] == -(-size // 16)  # pieces of at most 16 characters
