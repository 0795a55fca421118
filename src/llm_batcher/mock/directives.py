"""The `@mock key=value ...` first line that steers one context of the mock LLM.

Pure and standard library only: the mock is spawned per batch, so its imports stay small.
"""

from __future__ import annotations

from enum import StrEnum

from llm_batcher.records import Record

DIRECTIVE_WORD = "@mock"
MAX_MS = 3_600_000
MAX_COUNT = 1_000_000


class FailMode(StrEnum):
    """How the whole mock process misbehaves once a context has written `fail_after` tokens."""

    EXIT = "exit"
    HANG = "hang"
    GARBAGE = "garbage"


class Directive(Record):
    """The settings of one `@mock` line; None where the line does not set a key."""

    __slots__ = ("extra_tokens", "fail", "fail_after", "itl_ms", "stamp", "ttft_ms")
    ttft_ms: int | None
    itl_ms: int | None
    extra_tokens: int | None
    fail: FailMode | None
    fail_after: int | None
    stamp: bool | None

    def __init__(
        self,
        ttft_ms: int | None = None,
        itl_ms: int | None = None,
        extra_tokens: int | None = None,
        fail: FailMode | None = None,
        fail_after: int | None = None,
        stamp: bool | None = None,
    ) -> None:
        self._set(
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            extra_tokens=extra_tokens,
            fail=fail,
            fail_after=fail_after,
            stamp=stamp,
        )


_LIMITS = {
    "ttft_ms": MAX_MS,
    "itl_ms": MAX_MS,
    "extra_tokens": MAX_COUNT,
    "fail_after": MAX_COUNT,
    "stamp": 1,
}
_KNOWN_KEYS = (*_LIMITS, "fail")


def is_directive_line(line: str) -> bool:
    """True for `@mock` alone or followed by a space; `@mockery` is ordinary text."""
    return line == DIRECTIVE_WORD or line.startswith(DIRECTIVE_WORD + " ")


def parse_directive(line: str) -> Directive:
    """Parse a directive line (without its line break); raise ValueError on any bad pair."""
    if not is_directive_line(line):
        raise ValueError(f"not a {DIRECTIVE_WORD} line: {line[:40]!r}")
    counts: dict[str, int] = {}
    fail: FailMode | None = None
    seen: set[str] = set()
    for pair in line[len(DIRECTIVE_WORD) :].split():
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not key=value")
        if key not in _KNOWN_KEYS:
            raise ValueError(f"unknown key {key!r} (known keys: {', '.join(_KNOWN_KEYS)})")
        if key in seen:
            raise ValueError(f"key {key!r} given twice")
        seen.add(key)
        if key == "fail":
            fail = _parse_fail(raw)
        else:
            counts[key] = parse_count(key, raw, _LIMITS[key])
    return Directive(
        ttft_ms=counts.get("ttft_ms"),
        itl_ms=counts.get("itl_ms"),
        extra_tokens=counts.get("extra_tokens"),
        fail=fail,
        fail_after=counts.get("fail_after"),
        stamp=None if "stamp" not in counts else counts["stamp"] == 1,
    )


def split_context(context: str) -> tuple[Directive | None, str]:
    """Split a context into its directive (None without one) and the body to echo."""
    first, _, rest = context.partition("\n")
    line = first.removesuffix("\r")
    if not is_directive_line(line):
        return None, context
    return parse_directive(line), rest


def parse_count(name: str, raw: str, limit: int) -> int:
    """Parse a non-negative decimal integer no greater than ``limit``; ValueError names ``name``."""
    if raw.startswith("-") and raw[1:].isascii() and raw[1:].isdigit():
        raise ValueError(f"{name}={raw!r} must not be negative")
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{name}={raw!r} is not a non-negative integer")
    value = int(raw)
    if value > limit:
        raise ValueError(f"{name}={raw!r} is larger than {limit}")
    return value


def _parse_fail(raw: str) -> FailMode:
    try:
        return FailMode(raw)
    except ValueError:
        modes = ", ".join(mode.value for mode in FailMode)
        raise ValueError(f"fail={raw!r} is not one of: {modes}") from None
