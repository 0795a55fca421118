"""Running the real `llm-mock` process in tests: context files, output decoding, live reading."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from llm_batcher.codec import ChildLine, FinishLine, TokenLine, decode_line, encode_context_file

MOCK = Path(sys.executable).parent / "llm-mock"
RUN_TIMEOUT_S = 30


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without mock settings, and without PYTHONUNBUFFERED: the mock
    must flush each line itself."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMB_MOCK_") and k != "PYTHONUNBUFFERED"
    }
    env.update(overrides)
    return env


def write_contexts(directory: Path, contexts: Sequence[str]) -> list[str]:
    paths = []
    for i, context in enumerate(contexts):
        path = directory / f"context-{i}.b64"
        path.write_bytes(encode_context_file(context))
        paths.append(str(path))
    return paths


def run_mock(
    directory: Path, contexts: Sequence[str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(MOCK), *write_contexts(directory, contexts), *args],
        capture_output=True,
        env=clean_env() if env is None else env,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def decode_all(stdout: bytes, batch_size: int) -> list[ChildLine]:
    assert stdout.endswith(b"\n")
    return [decode_line(line, batch_size) for line in stdout.split(b"\n")[:-1]]


def answers(lines: Sequence[ChildLine], batch_size: int) -> list[list[str]]:
    """Tokens per context; asserts every context finished once and wrote nothing after."""
    tokens: list[list[str]] = [[] for _ in range(batch_size)]
    finished: set[int] = set()
    for line in lines:
        assert line.index not in finished, f"line after finish: {line}"
        if isinstance(line, TokenLine):
            tokens[line.index].append(line.token)
        else:
            assert line == FinishLine(line.index, "stop")
            finished.add(line.index)
    assert finished == set(range(batch_size))
    return tokens


class LineReader:
    """Reads a pipe in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self._thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self._lines.put((time.monotonic(), line))
        self._lines.put((time.monotonic(), b""))

    def next(self, timeout_s: float = 10) -> tuple[float, bytes]:
        """(arrival time, line); b"" at end of file."""
        return self._lines.get(timeout=timeout_s)

    def rest(self, timeout_s: float = 10) -> list[bytes]:
        """Every remaining line, once the pipe is closed."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive()
        lines = []
        while (line := self._lines.get_nowait()[1]) != b"":
            lines.append(line)
        return lines


def read_lines(proc: subprocess.Popen[bytes]) -> LineReader:
    assert proc.stdout is not None
    return LineReader(proc.stdout)


@contextmanager
def spawn(
    directory: Path, contexts: Sequence[str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [str(MOCK), *write_contexts(directory, contexts), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
