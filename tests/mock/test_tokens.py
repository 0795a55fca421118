"""The mock's tokenizer and filler words."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import pytest

from llm_batcher.mock.tokens import FILLER_WORDS, MAX_TOKEN_CHARS, filler, tokenize
from tests.support.contexts import ALL_TEXTS

# Characters chosen to hit every branch: ASCII and Unicode white space, astral code points,
# combining marks, controls and NUL.
_ALPHABET = "ab Z9\t\n\r\x0b\x0c\x00\x85\u00a0\u2028\u3000é\u0301😀🇫שع\\\"'$`"


def _random_texts(count: int) -> list[str]:
    rng = random.Random(20240611)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 80))) for _ in range(count)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("hello", ["hello"]),
        ("hello world", ["hello ", "world"]),
        ("hello world\n", ["hello ", "world\n"]),
        ("  lead", ["  ", "lead"]),
        ("a\tb\n\nc", ["a\t", "b\n\n", "c"]),
        ("a\r\nb", ["a\r\n", "b"]),
        ("x" * 40, ["x" * 16, "x" * 16, "x" * 8]),
        ("a" + " " * 20 + "b", ["a" + " " * 15, " " * 5, "b"]),
        (" " * 20 + "b", [" " * 16, " " * 4, "b"]),
        ("data: x\n\n", ["data: ", "x\n\n"]),
        ("$(rm -rf /)", ["$(rm ", "-rf ", "/)"]),
        ("nul\x00 x", ["nul\x00 ", "x"]),
        ("🎉🎉 ok", ["🎉🎉 ", "ok"]),
    ],
)
def test_tokenize_examples(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


@pytest.mark.parametrize("text", ALL_TEXTS.values(), ids=ALL_TEXTS.keys())
def test_tokens_join_back_to_hostile_text(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_tokens_join_back_to_random_text() -> None:
    for text in _random_texts(500):
        assert "".join(tokenize(text)) == text, repr(text)


@pytest.mark.parametrize("text", [*ALL_TEXTS.values(), *_random_texts(200)])
def test_token_shape(text: str) -> None:
    tokens = tokenize(text)
    for position, token in enumerate(tokens):
        assert 1 <= len(token) <= MAX_TOKEN_CHARS
        # White space only ever ends a token: no word starts after it inside the same token.
        for before, after in itertools.pairwise(token):
            assert not (before.isspace() and not after.isspace()), (position, token)


def test_long_run_is_cut_into_16_character_pieces() -> None:
    tokens = tokenize(ALL_TEXTS["run_64k"])
    assert len(tokens) == 65536 // MAX_TOKEN_CHARS
    assert set(tokens) == {"é" * MAX_TOKEN_CHARS}


def test_words_are_separate_tokens() -> None:
    tokens = tokenize("one two  three\tfour\nfive")
    assert [token.strip() for token in tokens] == ["one", "two", "three", "four", "five"]


def test_filler_words_and_count() -> None:
    words = filler(50, "some context")
    assert len(words) == 50
    assert set(words) <= set(FILLER_WORDS)
    assert len(set(words)) > 1
    assert filler(0, "some context") == []


def test_filler_depends_only_on_seed() -> None:
    assert filler(20, "context A") == filler(20, "context A")
    assert filler(20, 7) == filler(20, 7)
    others = {tuple(filler(20, f"context {i}")) for i in range(10)}
    assert len(others) > 1


def test_filler_is_the_same_in_another_process() -> None:
    """String seeds must not depend on hash randomisation, or a retry would answer differently."""
    code = "from llm_batcher.mock.tokens import filler; print(repr(filler(12, 'retry me')))"
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": hash_seed},
            timeout=30,
            check=True,
        )
        assert result.stdout.strip() == repr(filler(12, "retry me"))
