"""`llm-mock FILE...`: the mock LLM child process (docs/protocol.md, part 2).

It starts once per batch, so it imports only the standard library and its own pure modules, and
not even all of that: argparse (with gettext, locale and shutil), dataclasses (with inspect, ast
and dis) and typing are left out. `python -X importtime -m llm_batcher.mock.cli` shows the cost.
With `--files-from-stdin` it starts ahead of its batch and waits for the paths on stdin.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

from llm_batcher.codec import decode_context_file, encode_finish, encode_token
from llm_batcher.mock.directives import (
    DIRECTIVE_WORD,
    MAX_COUNT,
    MAX_MS,
    Directive,
    FailMode,
    parse_count,
    split_context,
)
from llm_batcher.mock.schedule import ContextPlan, Event, EventKind, build_timeline
from llm_batcher.mock.tokens import filler, tokenize
from llm_batcher.records import Record

# Importing typing costs milliseconds on every batch; mypy honours a local TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import NoReturn

EXIT_OK = 0
EXIT_BROKEN_PIPE = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
GARBAGE_LINE = b"%%garbage%%\n"
HANG_POLL_S = 0.5
DEFAULT_TTFT_MS = "200-600"
DEFAULT_ITL_MS = "20-60"
DEFAULT_EXTRA_TOKENS = "0"
DEFAULT_DIRECTIVES = "on"
# Flags that take a value; each but --seed falls back to LLMB_MOCK_<NAME>.
VALUE_FLAGS = ("--ttft-ms", "--itl-ms", "--extra-tokens", "--directives", "--seed")
SWITCH_VALUES = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}
FILES_FROM_STDIN = "--files-from-stdin"
USAGE = (
    "usage: llm-mock [--ttft-ms MIN-MAX] [--itl-ms MIN-MAX] [--extra-tokens N] [--seed N]\n"
    "                [--directives on|off]\n"
    "                (FILE... | --files-from-stdin)\n"
    "Mock LLM: echo each base64 context file as tokens (docs/protocol.md, part 2).\n"
    f"  --ttft-ms MIN-MAX   time to first token, ms (default {DEFAULT_TTFT_MS})\n"
    f"  --itl-ms MIN-MAX    delay between tokens, ms (default {DEFAULT_ITL_MS})\n"
    "  --extra-tokens N    filler tokens after the echo\n"
    "  --seed N            seed for reproducible random delays\n"
    f"  --directives on|off honour a first line `{DIRECTIVE_WORD} key=value ...` (default on)\n"
    f"  {FILES_FROM_STDIN}  read the FILE paths from stdin, one a line, ending with an empty\n"
    "                      line or end of file; with none at all, exit 0 at once\n"
)


class UsageError(Exception):
    """Bad arguments, environment or context file: reported in one line, exit status 2."""


class HelpRequested(Exception):
    """`-h` or `--help`: print the usage and exit 0."""


class MockConfig(Record):
    """The command-line and environment settings; ranges are inclusive (min, max) pairs."""

    __slots__ = ("directives", "extra_tokens", "files_from_stdin", "itl_ms", "seed", "ttft_ms")
    ttft_ms: tuple[int, int]
    itl_ms: tuple[int, int]
    extra_tokens: int
    seed: int | None
    files_from_stdin: bool
    directives: bool

    def __init__(
        self,
        ttft_ms: tuple[int, int],
        itl_ms: tuple[int, int],
        extra_tokens: int,
        seed: int | None = None,
        files_from_stdin: bool = False,
        directives: bool = True,
    ) -> None:
        self._set(
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            extra_tokens=extra_tokens,
            seed=seed,
            files_from_stdin=files_from_stdin,
            directives=directives,
        )


class Context(Record):
    """One context file: the whole text, its directive if any, and the body to echo."""

    __slots__ = ("body", "directive", "text")
    text: str
    directive: Directive | None
    body: str

    def __init__(self, text: str, directive: Directive | None, body: str) -> None:
        self._set(text=text, directive=directive, body=body)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock on the context files in ``argv`` (or on stdin); return the exit status."""
    # A parent that ignores these signals passes that on through exec; the mock must still die.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    parent_pid = os.getppid()
    try:
        paths, config = parse_args(sys.argv[1:] if argv is None else argv)
        if config.files_from_stdin:
            paths = read_paths(sys.stdin.buffer)
            if not paths:  # a spare child that was never given a batch
                return EXIT_OK
        contexts = [load_context(path, config.directives) for path in paths]
    except HelpRequested:
        sys.stdout.write(USAGE)
        return EXIT_OK
    except UsageError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    plans = build_plans(contexts, config)
    stamped = frozenset(i for i, plan in enumerate(plans) if plan.stamp)
    try:
        return play(build_timeline(plans), _stdout_writer(), parent_pid, stamped)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def read_paths(lines: Iterable[bytes]) -> list[str]:
    """Context file paths, one a line, up to an empty line or the end of input."""
    paths = []
    for raw in lines:
        path = raw.rstrip(b"\n")
        if not path:
            break
        paths.append(os.fsdecode(path))
    return paths


def parse_args(argv: Sequence[str]) -> tuple[list[str], MockConfig]:
    """Parse the command line, falling back to LLMB_MOCK_* variables; UsageError if invalid."""
    files, values, from_stdin = _split_argv(argv)
    if files and from_stdin:
        raise UsageError(f"FILE arguments and {FILES_FROM_STDIN} exclude each other")
    if not files and not from_stdin:
        raise UsageError(f"at least one FILE is required (or {FILES_FROM_STDIN})")
    try:
        seed = None if values.get("--seed") is None else int(values["--seed"])
    except ValueError:
        raise UsageError(f"--seed={values['--seed']!r} is not an integer") from None
    try:
        config = MockConfig(
            ttft_ms=parse_range(*_setting(values.get("--ttft-ms"), "--ttft-ms", DEFAULT_TTFT_MS)),
            itl_ms=parse_range(*_setting(values.get("--itl-ms"), "--itl-ms", DEFAULT_ITL_MS)),
            extra_tokens=parse_count(
                *_setting(values.get("--extra-tokens"), "--extra-tokens", DEFAULT_EXTRA_TOKENS),
                MAX_COUNT,
            ),
            seed=seed,
            files_from_stdin=from_stdin,
            directives=parse_switch(
                *_setting(values.get("--directives"), "--directives", DEFAULT_DIRECTIVES)
            ),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return files, config


def _split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """(files, flag -> value, --files-from-stdin given); `--flag value` and `--flag=value`."""
    files: list[str] = []
    values: dict[str, str] = {}
    from_stdin = False
    args = iter(argv)
    for arg in args:
        if arg == "--":
            files.extend(args)
            break
        if arg in ("-h", "--help"):
            raise HelpRequested
        if arg == FILES_FROM_STDIN:
            from_stdin = True
            continue
        if not arg.startswith("-") or arg == "-":
            files.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        if flag not in VALUE_FLAGS:
            raise UsageError(f"unrecognized argument: {arg}")
        if not eq:
            following = next(args, None)
            if following is None:
                raise UsageError(f"{flag} expects a value")
            value = following
        values[flag] = value
    return files, values, from_stdin


def _setting(cli_value: str | None, flag: str, default: str) -> tuple[str, str]:
    """(name to blame, raw value) from the flag, else LLMB_MOCK_<NAME>, else the default."""
    if cli_value is not None:
        return flag, cli_value
    env_name = "LLMB_MOCK_" + flag.removeprefix("--").replace("-", "_").upper()
    env_value = os.environ.get(env_name)
    if env_value is not None:
        return env_name, env_value.strip()
    return flag, default


def parse_range(name: str, raw: str) -> tuple[int, int]:
    """Parse `MIN-MAX` or `N` milliseconds into an inclusive (min, max) pair."""
    low_raw, dash, high_raw = raw.partition("-")
    try:
        low = parse_count(name, low_raw, MAX_MS)
        high = parse_count(name, high_raw, MAX_MS) if dash else low
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not MIN-MAX or N (whole milliseconds, 0 to {MAX_MS})"
        ) from None
    if low > high:
        raise ValueError(f"{name}={raw!r}: MIN is greater than MAX")
    return low, high


def parse_switch(name: str, raw: str) -> bool:
    """Parse `on` / `off` (or 1/0, true/false)."""
    try:
        return SWITCH_VALUES[raw.lower()]
    except KeyError:
        raise ValueError(f"{name}={raw!r} is not on or off") from None


def load_context(path: str, directives: bool = True) -> Context:
    """Read and decode one context file and its directive (none when ``directives`` is off: a
    `@mock` line is then text like any other); UsageError names the file."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = decode_context_file(data)
    except ValueError as exc:
        raise UsageError(f"{path}: not a base64-encoded UTF-8 context: {exc}") from None
    if not directives:
        return Context(text, None, text)
    try:
        directive, body = split_context(text)
    except ValueError as exc:
        raise UsageError(f"{path}: bad {DIRECTIVE_WORD} directive: {exc}") from None
    return Context(text, directive, body)


def build_plans(contexts: Sequence[Context], config: MockConfig) -> list[ContextPlan]:
    """Each context's tokens and delays; the same seed gives the same delays."""
    rng = random.Random(config.seed)
    plans = []
    for context in contexts:
        # Drawn for every context, even when a directive overrides them, so that one
        # context's directive does not change the delays of the others.
        ttft_ms = rng.randint(*config.ttft_ms)
        itl_ms = rng.randint(*config.itl_ms)
        plans.append(plan_context(context, config, ttft_ms, itl_ms))
    return plans


def plan_context(context: Context, config: MockConfig, ttft_ms: int, itl_ms: int) -> ContextPlan:
    """The plan of one context, its directive taking precedence over the drawn delays."""
    directive = context.directive
    if directive is None:
        tokens = tokenize(context.body) + filler(config.extra_tokens, context.text)
        return ContextPlan(tuple(tokens), ttft_ms, itl_ms)
    tokens = tokenize(context.body) + filler(directive.extra_tokens or 0, context.text)
    return ContextPlan(
        tokens=tuple(tokens),
        ttft_ms=ttft_ms if directive.ttft_ms is None else directive.ttft_ms,
        itl_ms=itl_ms if directive.itl_ms is None else directive.itl_ms,
        fail=directive.fail,
        fail_after=directive.fail_after or 0,
        stamp=bool(directive.stamp),
    )


def play(
    timeline: Sequence[Event],
    emit: Callable[[bytes], None],
    parent_pid: int,
    stamped: frozenset[int] = frozenset(),
) -> int:
    """Write the timeline in real time; return the exit status (a hang returns once orphaned).

    Tokens of the contexts in ``stamped`` start with ``time.time_ns()`` and ``|``, taken just
    before the write, so that a client can measure how long the line took to reach it.
    """
    start_s = time.monotonic()
    for event in timeline:
        # Sleeping until an absolute time keeps write and scheduling delays from adding up.
        delay_s = start_s + event.t_ms / 1000 - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)
        if event.kind is EventKind.TOKEN:
            token = event.payload
            if event.index in stamped:
                token = f"{time.time_ns()}|{token}"
            emit(encode_token(event.index, token))
        elif event.kind is EventKind.FINISH:
            emit(encode_finish(event.index, event.payload))
        elif event.payload == FailMode.GARBAGE:
            emit(GARBAGE_LINE)
        else:
            return _fail(event, parent_pid)
    return EXIT_OK


def _fail(event: Event, parent_pid: int) -> int:
    if event.payload == FailMode.EXIT:
        _say(f"context {event.index}: fail=exit, exiting with status {EXIT_FAILED}")
        return EXIT_FAILED
    _say(f"context {event.index}: fail=hang, no more output")
    wait_until_orphaned(parent_pid)
    _say("parent process is gone, exiting")
    return EXIT_FAILED


def wait_until_orphaned(parent_pid: int, poll_s: float = HANG_POLL_S) -> None:
    """Block until the parent changes, so a hung mock does not outlive the worker that ran it."""
    while os.getppid() == parent_pid:
        time.sleep(poll_s)


def _stdout_writer() -> Callable[[bytes], None]:
    out = sys.stdout.buffer

    def emit(line: bytes) -> None:
        out.write(line)
        out.flush()

    return emit


def _silence_stdout() -> None:
    # Unwritten bytes stay buffered and would fail again, with a traceback, when the
    # interpreter flushes stdout at exit; send them to /dev/null instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _say(message: str) -> None:
    line = "llm-mock: " + " ".join(message.splitlines()) + "\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except OSError:
        # Diagnostics are best effort: a closed stderr must not change the exit status.
        return


def run() -> NoReturn:
    """The `llm-mock` program: main(), then an exit without the interpreter's teardown.

    Tearing down an interpreter costs 4 ms of CPU here, at the very moment the worker relays the
    batch's last tokens and the next batch forms; nothing is left to clean up once the output
    is flushed (a closed pipe was sent to /dev/null by main)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or EXIT_BROKEN_PIPE
    os._exit(code)


if __name__ == "__main__":
    run()
