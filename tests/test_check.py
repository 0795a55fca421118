"""The pure part of `llm-batcher check`: the answer the mock gives a context."""

from __future__ import annotations

from llm_batcher.check import mock_answer
from llm_batcher.mock.directives import split_context
from llm_batcher.mock.tokens import FILLER_WORDS

MOCK_DIRECTIVE = "@mock ttft_ms=0 itl_ms=10\n"


def test_the_mock_answer_is_the_body_of_the_context() -> None:
    assert mock_answer(MOCK_DIRECTIVE + "queued,  batched\n") == "queued,  batched\n"
    assert mock_answer("no directive") == "no directive"
    assert split_context(MOCK_DIRECTIVE + "x")[0] is not None  # the directive parses


def test_the_mock_answer_counts_the_filler_of_a_directive() -> None:
    answer = mock_answer("@mock extra_tokens=2\nx")
    assert answer.startswith("x ")
    assert answer.removeprefix("x") in {a + b for a in FILLER_WORDS for b in FILLER_WORDS}
    assert mock_answer("@mock extra_tokens=2\nx") == answer  # the same every time
