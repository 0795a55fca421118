"""Parsing the `@mock key=value ...` first line of a context."""

from __future__ import annotations

import pytest

from llm_batcher.mock.directives import (
    MAX_COUNT,
    MAX_MS,
    Directive,
    FailMode,
    parse_directive,
    split_context,
)
from tests.support.contexts import ALL_TEXTS


def test_full_directive() -> None:
    text = "@mock ttft_ms=5 itl_ms=7 extra_tokens=3 fail=exit fail_after=2\nthe body"
    assert split_context(text) == (
        Directive(ttft_ms=5, itl_ms=7, extra_tokens=3, fail=FailMode.EXIT, fail_after=2),
        "the body",
    )


@pytest.mark.parametrize("mode", ["exit", "hang", "garbage"])
def test_fail_modes(mode: str) -> None:
    assert parse_directive(f"@mock fail={mode}").fail == FailMode(mode)


def test_zero_values_are_kept() -> None:
    directive = parse_directive("@mock ttft_ms=0 itl_ms=0 extra_tokens=0 fail_after=0")
    assert directive == Directive(ttft_ms=0, itl_ms=0, extra_tokens=0, fail_after=0)


def test_largest_values_are_accepted() -> None:
    directive = parse_directive(f"@mock ttft_ms={MAX_MS} extra_tokens={MAX_COUNT}")
    assert (directive.ttft_ms, directive.extra_tokens) == (MAX_MS, MAX_COUNT)


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ("@mock\nbody", "body"),
        ("@mock", ""),
        ("@mock ", ""),
        ("@mock\n", ""),
        ("@mock\r\nbody\r\n", "body\r\n"),
        ("@mock\n\n", "\n"),
    ],
)
def test_bare_directive_sets_nothing(text: str, body: str) -> None:
    assert split_context(text) == (Directive(), body)


def test_extra_spaces_between_pairs() -> None:
    directive, body = split_context("@mock   ttft_ms=1    itl_ms=2   \nx")
    assert directive == Directive(ttft_ms=1, itl_ms=2)
    assert body == "x"


def test_crlf_line_break_is_not_part_of_values() -> None:
    directive, body = split_context("@mock ttft_ms=5 fail=hang\r\nline 1\r\nline 2")
    assert directive == Directive(ttft_ms=5, fail=FailMode.HANG)
    assert body == "line 1\r\nline 2"


@pytest.mark.parametrize(("raw", "stamp"), [("1", True), ("0", False)])
def test_stamp_is_on_or_off(raw: str, stamp: bool) -> None:
    assert parse_directive(f"@mock stamp={raw}") == Directive(stamp=stamp)


def test_directive_without_body() -> None:
    assert split_context("@mock itl_ms=9") == (Directive(itl_ms=9), "")


@pytest.mark.parametrize(
    "text",
    [
        "@mockery\nbody",
        "@mockery ttft_ms=1",
        "@mock\tttft_ms=1\nbody",
        " @mock ttft_ms=1\nbody",
        "@MOCK ttft_ms=1\nbody",
        "@moc ttft_ms=1",
        "hello\n@mock fail=exit\n",
        "\n@mock ttft_ms=1",
        "\ufeff@mock ttft_ms=1",
    ],
)
def test_not_a_directive(text: str) -> None:
    assert split_context(text) == (None, text)


@pytest.mark.parametrize("text", ALL_TEXTS.values(), ids=ALL_TEXTS.keys())
def test_hostile_text_without_directive_is_untouched(text: str) -> None:
    assert split_context(text) == (None, text)


@pytest.mark.parametrize("text", ALL_TEXTS.values(), ids=ALL_TEXTS.keys())
@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_hostile_body_after_directive_is_exact(text: str, line_break: str) -> None:
    directive, body = split_context(f"@mock ttft_ms=0 itl_ms=0{line_break}{text}")
    assert directive == Directive(ttft_ms=0, itl_ms=0)
    assert body == text


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("@mock speed=3", "unknown key 'speed'"),
        ("@mock $(rm -rf /)=1", "'$(rm' is not key=value"),
        ("@mock $(reboot)=1", "unknown key '$(reboot)'"),
        ("@mock `reboot`=1", "unknown key '`reboot`'"),
        ("@mock ttft_ms=abc", "ttft_ms='abc' is not a non-negative integer"),
        ("@mock ttft_ms=", "ttft_ms='' is not a non-negative integer"),
        ("@mock itl_ms=1.5", "itl_ms='1.5'"),
        ("@mock itl_ms=+5", "itl_ms='+5'"),
        ("@mock itl_ms=1_000", "itl_ms='1_000'"),
        ("@mock itl_ms=٣", "itl_ms='٣'"),
        ("@mock itl_ms=0x10", "itl_ms='0x10'"),
        ("@mock ttft_ms=-5", "ttft_ms='-5' must not be negative"),
        ("@mock extra_tokens=-1", "extra_tokens='-1' must not be negative"),
        ("@mock fail_after=-0", "must not be negative"),
        ("@mock stamp=2", "stamp='2' is larger than 1"),
        ("@mock stamp=yes", "stamp='yes' is not a non-negative integer"),
        (f"@mock ttft_ms={MAX_MS + 1}", "larger than"),
        (f"@mock extra_tokens={10**30}", "larger than"),
        ("@mock fail=boom", "fail='boom' is not one of: exit, hang, garbage"),
        ("@mock fail=EXIT", "fail='EXIT'"),
        ("@mock fail=", "fail=''"),
        ("@mock ttft_ms=1 ttft_ms=2", "key 'ttft_ms' given twice"),
        ("@mock ttft_ms", "'ttft_ms' is not key=value"),
        ("@mock hello world", "'hello' is not key=value"),
        ('@mock ttft_ms="5"', "ttft_ms='\"5\"'"),
    ],
)
def test_bad_directive_is_rejected_clearly(line: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        split_context(line + "\nbody")
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_directive_refuses_ordinary_text() -> None:
    with pytest.raises(ValueError, match="not a @mock line"):
        parse_directive("@mockery")


def test_directive_is_immutable() -> None:
    directive = Directive(ttft_ms=1)
    with pytest.raises(AttributeError):
        directive.ttft_ms = 2
