"""`llm-mock --files-from-stdin`: started ahead of its batch, it waits for the paths on stdin."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from llm_batcher.mock.cli import parse_args, read_paths
from tests.support.contexts import FAST

from .mockproc import MOCK, RUN_TIMEOUT_S, answers, clean_env, decode_all, write_contexts


def run_with_stdin(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(MOCK), "--files-from-stdin", *args],
        input=stdin,
        capture_output=True,
        env=clean_env(),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("end", [b"\n", b""], ids=["empty-line", "end-of-file"])
def test_paths_on_stdin_run_the_batch(tmp_path: Path, end: bytes) -> None:
    paths = write_contexts(tmp_path, [FAST + "first answer", FAST + "second one"])
    stdin = b"".join(p.encode() + b"\n" for p in paths) + end
    result = run_with_stdin(stdin)
    assert (result.returncode, result.stderr) == (0, b"")
    assert answers(decode_all(result.stdout, 2), 2) == [["first ", "answer"], ["second ", "one"]]


def test_lines_after_the_empty_line_are_not_read(tmp_path: Path) -> None:
    [path] = write_contexts(tmp_path, [FAST + "only this"])
    result = run_with_stdin(f"{path}\n\n/not/a/context\n".encode())
    assert result.returncode == 0
    assert answers(decode_all(result.stdout, 1), 1) == [["only ", "this"]]


def test_a_spare_that_gets_no_batch_exits_0_silently() -> None:
    """The worker closes a spare's stdin without paths on shutdown (or dies): nothing to run."""
    for stdin in (b"", b"\n"):
        result = run_with_stdin(stdin)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_a_bad_path_on_stdin_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_with_stdin(f"{tmp_path / 'missing'}\n\n".encode())
    assert (result.returncode, result.stdout) == (2, b"")
    assert b"missing: cannot read" in result.stderr


def test_files_and_stdin_exclude_each_other(tmp_path: Path) -> None:
    [path] = write_contexts(tmp_path, [FAST + "x"])
    result = run_with_stdin(b"", path)
    assert (result.returncode, result.stdout) == (2, b"")
    assert b"--files-from-stdin" in result.stderr


def test_parse_and_read_paths() -> None:
    files, config = parse_args(["--files-from-stdin", "--ttft-ms=5", "--seed", "3"])
    assert (files, config.files_from_stdin, config.ttft_ms, config.seed) == ([], True, (5, 5), 3)
    files, config = parse_args(["a.b64", "--itl-ms", "1-2", "--", "--odd-name.b64"])
    assert (files, config.files_from_stdin, config.itl_ms) == (
        ["a.b64", "--odd-name.b64"],
        False,
        (1, 2),
    )
    assert read_paths(io.BytesIO(b"/t/a\n/t/b\n\n/t/c\n")) == ["/t/a", "/t/b"]
    assert read_paths(io.BytesIO(b"/t/a")) == ["/t/a"]
    assert read_paths(io.BytesIO(b"")) == []


def test_help_exits_0_with_the_usage() -> None:
    result = subprocess.run(
        [str(MOCK), "--help"], capture_output=True, env=clean_env(), timeout=RUN_TIMEOUT_S
    )
    assert result.returncode == 0
    assert b"--files-from-stdin" in result.stdout
