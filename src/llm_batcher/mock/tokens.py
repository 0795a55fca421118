"""Tokens of the mock's answer: the echoed context cut into words, then deterministic filler.

Pure and standard library only: the mock is spawned per batch, so its imports stay small.
"""

from __future__ import annotations

import random
import re

MAX_TOKEN_CHARS = 16
FILLER_WORDS = (
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
    " sed",
    " do",
    " eiusmod",
    " tempor",
)

# A leading run of white space is its own token; every later match is a word with the white
# space that follows it, so the matches always tile the whole text.
_TOKEN_RE = re.compile(r"\s+|\S+\s*")


def tokenize(text: str) -> list[str]:
    """Split text into tokens whose concatenation is exactly ``text``."""
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        tokens.extend(token[i : i + MAX_TOKEN_CHARS] for i in range(0, len(token), MAX_TOKEN_CHARS))
    return tokens


def filler(n: int, seed: int | str | bytes) -> list[str]:
    """``n`` filler words chosen from ``seed`` alone, so a retried context gets the same answer."""
    rng = random.Random(seed)
    return [rng.choice(FILLER_WORDS) for _ in range(n)]
