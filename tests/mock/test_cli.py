"""The real `llm-mock` process: its output, its timing and its failure modes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm_batcher.codec import FinishLine, ProtocolError, TokenLine, decode_line
from llm_batcher.mock.cli import Context, MockConfig, build_plans, load_context
from llm_batcher.mock.directives import MAX_MS, split_context
from llm_batcher.mock.tokens import FILLER_WORDS, tokenize
from tests.support.contexts import ALL_TEXTS, FAST

from .mockproc import (
    MOCK,
    RUN_TIMEOUT_S,
    answers,
    clean_env,
    decode_all,
    read_lines,
    run_mock,
    spawn,
    write_contexts,
)


def test_echo_of_hostile_contexts(tmp_path: Path) -> None:
    texts = list(ALL_TEXTS.values())
    result = run_mock(tmp_path, [FAST + text for text in texts])
    assert (result.returncode, result.stderr) == (0, b"")
    tokens = answers(decode_all(result.stdout, len(texts)), len(texts))
    for i, text in enumerate(texts):
        assert tokens[i] == tokenize(text)
        assert "".join(tokens[i]).encode() == text.encode()


def test_echo_without_directives(tmp_path: Path) -> None:
    texts = list(ALL_TEXTS.values())
    result = run_mock(tmp_path, texts, "--ttft-ms", "0", "--itl-ms", "0")
    assert result.returncode == 0
    tokens = answers(decode_all(result.stdout, len(texts)), len(texts))
    assert ["".join(t) for t in tokens] == texts


def test_crlf_directive_line_is_not_echoed(tmp_path: Path) -> None:
    result = run_mock(tmp_path, ["@mock ttft_ms=0 itl_ms=0\r\nfirst\r\nsecond\r\n"])
    assert result.returncode == 0
    assert answers(decode_all(result.stdout, 1), 1) == [["first\r\n", "second\r\n"]]


def test_extra_tokens_follow_the_echo_and_repeat_on_retry(tmp_path: Path) -> None:
    context = "@mock ttft_ms=0 itl_ms=0 extra_tokens=6\nhello world"
    runs = [run_mock(tmp_path, [context]) for _ in range(2)]
    first, second = (answers(decode_all(run.stdout, 1), 1)[0] for run in runs)
    assert first[:2] == ["hello ", "world"]
    assert len(first) == 8
    assert set(first[2:]) <= set(FILLER_WORDS)
    assert first == second


def test_extra_tokens_from_flag_and_environment(tmp_path: Path) -> None:
    contexts = ["plain context", FAST + "directive without extra tokens"]
    by_flag = run_mock(tmp_path, contexts, "--ttft-ms", "0", "--itl-ms", "0", "--extra-tokens", "3")
    env = clean_env(LLMB_MOCK_TTFT_MS="0", LLMB_MOCK_ITL_MS="0-0", LLMB_MOCK_EXTRA_TOKENS="2")
    by_env = run_mock(tmp_path, contexts, env=env)
    flag_wins = run_mock(tmp_path, contexts, "--extra-tokens", "1", env=env)
    expected_sizes = {by_flag: 2 + 3, by_env: 2 + 2, flag_wins: 2 + 1}
    for result, size in expected_sizes.items():
        assert result.returncode == 0
        plain, directed = answers(decode_all(result.stdout, 2), 2)
        assert (len(plain), directed) == (size, ["directive ", "without ", "extra ", "tokens"])


def test_directives_off_make_a_mock_line_text(tmp_path: Path) -> None:
    steered = "@mock ttft_ms=0 itl_ms=0 extra_tokens=5 fail=exit\nbody"
    broken = "@mock nope=1\nan unknown key is no error either"
    fast = clean_env(LLMB_MOCK_TTFT_MS="0", LLMB_MOCK_ITL_MS="0")
    on = run_mock(tmp_path, [steered], "--directives=on", env=fast)
    assert on.returncode == 3  # fail=exit honoured
    for off in (
        run_mock(tmp_path, [steered, broken], "--directives", "off", env=fast),
        run_mock(tmp_path, [steered, broken], env=clean_env(LLMB_MOCK_DIRECTIVES="0", **fast)),
    ):
        assert off.returncode == 0, off.stderr
        assert ["".join(t) for t in answers(decode_all(off.stdout, 2), 2)] == [steered, broken]
    bad = run_mock(tmp_path, [steered], "--directives=maybe", env=fast)
    assert bad.returncode == 2 and b"--directives='maybe' is not on or off" in bad.stderr


def test_a_batch_of_four_takes_about_as_long_as_one(tmp_path: Path) -> None:
    context = "@mock ttft_ms=0 itl_ms=50\n" + "word " * 10

    def duration_s(batch_size: int) -> float:
        start = time.monotonic()
        result = run_mock(tmp_path, [context] * batch_size)
        assert result.returncode == 0
        assert len(answers(decode_all(result.stdout, batch_size), batch_size)[-1]) == 10
        return time.monotonic() - start

    one, four = duration_s(1), duration_s(4)
    assert one >= 0.45
    # Contexts played one after another would take 4x as long: 2.5x still tells the two apart
    # and leaves room for a loaded machine, which slows the four-context run more (its start-up
    # reads and encodes four files).
    assert four / one < 2.5, (one, four)


def test_lines_arrive_as_they_are_written(tmp_path: Path) -> None:
    """The second token is due in an hour: the first is read only if it was flushed when it was
    written (order, not time: nothing is measured)."""
    with spawn(tmp_path, [f"@mock ttft_ms=0 itl_ms={MAX_MS}\none two"]) as proc:
        out = read_lines(proc)
        _, first = out.next()
        assert proc.poll() is None  # still waiting to write the second
    assert decode_line(first, 1) == TokenLine(0, "one ")


def test_stamp_puts_the_write_time_before_each_token(tmp_path: Path) -> None:
    contexts = ["@mock ttft_ms=0 itl_ms=20 stamp=1\none two three", FAST + "not stamped"]
    before_ns = time.time_ns()
    result = run_mock(tmp_path, contexts)
    after_ns = time.time_ns()
    assert (result.returncode, result.stderr) == (0, b"")
    stamped, plain = answers(decode_all(result.stdout, 2), 2)
    times = [int(token.partition("|")[0]) for token in stamped]
    assert [token.partition("|")[2] for token in stamped] == ["one ", "two ", "three"]
    assert before_ns < times[0] <= times[1] <= times[2] < after_ns
    assert plain == ["not ", "stamped"]


def test_fail_exit_after_two_tokens(tmp_path: Path) -> None:
    contexts = [FAST + "a b c", "@mock ttft_ms=0 itl_ms=0 fail=exit fail_after=2\nw x y z"]
    result = run_mock(tmp_path, contexts)
    assert result.returncode == 3
    assert b"fail=exit" in result.stderr
    lines = decode_all(result.stdout, 2)
    assert [line for line in lines if line.index == 1] == [TokenLine(1, "w "), TokenLine(1, "x ")]
    assert [line for line in lines if line.index == 0][-1] == FinishLine(0, "stop")


def test_fail_exit_with_delays_stops_the_other_contexts(tmp_path: Path) -> None:
    contexts = [
        "@mock ttft_ms=0 itl_ms=40\n" + "slow " * 20,
        "@mock ttft_ms=0 itl_ms=10 fail=exit fail_after=3\n" + "fast " * 20,
    ]
    result = run_mock(tmp_path, contexts)
    assert result.returncode == 3
    lines = decode_all(result.stdout, 2)
    assert sum(1 for line in lines if line.index == 1) == 3
    assert FinishLine(0, "stop") not in lines


def test_fail_hang_stops_writing_and_stays_alive(tmp_path: Path) -> None:
    contexts = [
        "@mock ttft_ms=0 itl_ms=0 fail=hang fail_after=2\none two three four",
        "@mock ttft_ms=50 itl_ms=0\nnever written",
    ]
    with spawn(tmp_path, contexts) as proc:
        out = read_lines(proc)
        lines = [decode_line(out.next()[1], 2) for _ in range(2)]
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.2)
        proc.kill()
        proc.wait(timeout=10)
        rest = out.rest()
    assert lines == [TokenLine(0, "one "), TokenLine(0, "two ")]
    assert rest == []


def test_fail_hang_exits_when_orphaned(tmp_path: Path) -> None:
    """The intermediate parent exits once the mock hangs; the orphaned mock must follow."""
    [path] = write_contexts(tmp_path, ["@mock ttft_ms=0 itl_ms=0 fail=hang fail_after=1\na b"])
    parent = (
        "import subprocess, sys\n"
        "mock = subprocess.Popen(\n"
        "    sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL\n"
        ")\n"
        "mock.stdout.readline()\n"
        "print(mock.pid, flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", parent, str(MOCK), path],
        capture_output=True,
        env=clean_env(),
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    mock = psutil.Process(int(result.stdout))
    try:
        deadline = time.monotonic() + 10
        while _is_running(mock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _is_running(mock)
    finally:
        if _is_running(mock):
            mock.kill()


def _is_running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_fail_garbage_writes_one_malformed_line_and_carries_on(tmp_path: Path) -> None:
    result = run_mock(tmp_path, ["@mock ttft_ms=0 itl_ms=0 fail=garbage fail_after=1\na b c"])
    assert result.returncode == 0
    raw_lines = result.stdout.split(b"\n")[:-1]
    malformed = []
    for position, raw in enumerate(raw_lines):
        try:
            decode_line(raw, 1)
        except ProtocolError:
            malformed.append(position)
    assert malformed == [1]
    good = [decode_line(raw, 1) for i, raw in enumerate(raw_lines) if i not in malformed]
    assert answers(good, 1) == [["a ", "b ", "c"]]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("@mock ttft_ms=fast\nbody", b"ttft_ms='fast'"),
        ("@mock colour=blue\nbody", b"unknown key 'colour'"),
        ("@mock itl_ms=-3\nbody", b"must not be negative"),
        ("@mock fail=explode\nbody", b"fail='explode'"),
    ],
)
def test_bad_directive_exits_2_before_writing(tmp_path: Path, bad: str, fragment: bytes) -> None:
    result = run_mock(tmp_path, [FAST + "fine", bad])
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.count(b"\n") == 1
    assert fragment in result.stderr
    assert b"context-1.b64" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--ttft-ms", "9-1"], {}, b"--ttft-ms='9-1'"),
        (["--itl-ms", "fast"], {}, b"--itl-ms='fast'"),
        (["--extra-tokens", "-1"], {}, b"must not be negative"),
        (["--seed", "x"], {}, b"--seed"),
        (["--bogus"], {}, b"--bogus"),
        ([], {"LLMB_MOCK_ITL_MS": "1-2-3"}, b"LLMB_MOCK_ITL_MS='1-2-3'"),
        ([], {"LLMB_MOCK_TTFT_MS": "-5"}, b"LLMB_MOCK_TTFT_MS"),
        ([], {"LLMB_MOCK_EXTRA_TOKENS": "many"}, b"LLMB_MOCK_EXTRA_TOKENS='many'"),
    ],
)
def test_bad_settings_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], fragment: bytes
) -> None:
    result = run_mock(tmp_path, [FAST + "fine"], *args, env=clean_env(**env))
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.count(b"\n") == 1
    assert fragment in result.stderr


def test_bad_files_exit_2(tmp_path: Path) -> None:
    (tmp_path / "not-base64").write_bytes(b"hello world!")
    (tmp_path / "not-utf8").write_bytes(b"/w==")
    for name, fragment in [
        ("missing", b"cannot read"),
        ("not-base64", b"not a base64"),
        ("not-utf8", b"not a base64"),
    ]:
        result = subprocess.run(
            [str(MOCK), str(tmp_path / name)],
            capture_output=True,
            env=clean_env(),
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert (result.returncode, result.stdout) == (2, b""), name
        assert fragment in result.stderr and result.stderr.count(b"\n") == 1, name


def test_no_files_exit_2(tmp_path: Path) -> None:
    result = run_mock(tmp_path, [])
    assert (result.returncode, result.stdout) == (2, b"")
    assert b"FILE" in result.stderr


def test_closed_stdout_exits_1_quietly(tmp_path: Path) -> None:
    context = "@mock ttft_ms=0 itl_ms=20\n" + "word " * 50
    with spawn(tmp_path, [context]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"{")
        proc.stdout.close()
        proc.wait(timeout=RUN_TIMEOUT_S)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    assert proc.returncode == 1
    assert stderr == b""


@pytest.mark.parametrize("ignored", [False, True])
def test_sigterm_kills_the_mock(tmp_path: Path, ignored: bool) -> None:
    """Even when the parent ignores SIGTERM, which exec passes on to the mock."""
    [path] = write_contexts(tmp_path, ["@mock ttft_ms=0 itl_ms=100\n" + "word " * 100])
    trap = 'trap "" TERM; ' if ignored else ""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'{trap}exec "$0" "$1"', str(MOCK), path],
        stdout=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out = read_lines(proc)
        out.next()
        proc.terminate()
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_seed_makes_delays_reproducible() -> None:
    contexts = [Context(f"c{i}", None, f"c{i}") for i in range(8)]
    config = MockConfig(ttft_ms=(0, 10_000), itl_ms=(0, 10_000), extra_tokens=0, seed=42)
    first, again = build_plans(contexts, config), build_plans(contexts, config)
    other = build_plans(contexts, MockConfig((0, 10_000), (0, 10_000), 0, seed=43))
    assert first == again
    assert [(p.ttft_ms, p.itl_ms) for p in first] != [(p.ttft_ms, p.itl_ms) for p in other]
    assert all(0 <= p.ttft_ms <= 10_000 and 0 <= p.itl_ms <= 10_000 for p in first)


def test_directive_overrides_drawn_delays_without_shifting_others(tmp_path: Path) -> None:
    texts = ["one", "@mock ttft_ms=7\ntwo", "three"]
    paths = write_contexts(tmp_path, texts)
    contexts = [load_context(path) for path in paths]
    assert [c.body for c in contexts] == ["one", "two", "three"]
    config = MockConfig((100, 200), (10, 20), extra_tokens=0, seed=1)
    plain = build_plans([Context(t, *split_context(t)) for t in ["one", "x", "three"]], config)
    steered = build_plans(contexts, config)
    assert steered[1].ttft_ms == 7
    assert 10 <= steered[1].itl_ms <= 20
    assert (steered[0].ttft_ms, steered[2].ttft_ms) == (plain[0].ttft_ms, plain[2].ttft_ms)


def test_mock_imports_only_the_standard_library() -> None:
    """The mock starts once per batch; heavy imports would add to every batch's latency."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import llm_batcher.mock.cli\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert loaded - set(sys.stdlib_module_names) == {"llm_batcher"}
    assert not loaded & {"asyncio", "logging", "typing", "pydantic", "redis"}
