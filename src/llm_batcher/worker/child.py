"""Spawning and supervising the LLM child process of one batch.

Contexts go to the child in files (base64, docs/protocol.md part 1) in a private directory
(mode 0700, files 0600) that is removed when the batch ends, however it ends. The child runs in a
process group of its own so that a hung child and anything it started can be killed together;
it is always reaped. How the child starts (at batch time with the files as arguments, or ahead
of time with the paths on stdin) is a Launcher's business (worker/spare.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

from llm_batcher.codec import ChildLine, ProtocolError, decode_line, encode_context_file
from llm_batcher.protocol.outcomes import ErrorCode

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_DIR_PREFIX = "llmb-batch-"
MAX_LINE_BYTES = 4 * 1024 * 1024
_KILL_GRACE_S = 2.0


class FailureCause(StrEnum):
    """Why the LLM child failed a batch (the `cause` label of llm_failures_total)."""

    CRASHED = "crashed"  # it exited non-zero
    HUNG = "hung"  # it outlived the batch deadline and was killed
    BAD_OUTPUT = "bad_output"  # a malformed line
    TRUNCATED = "truncated"  # it exited without finishing every context
    SPAWN = "spawn"  # it could not start

    @property
    def error_code(self) -> ErrorCode:
        """The error code of a task this failure ends."""
        return _ERROR_CODES[self]


_ERROR_CODES = {
    FailureCause.CRASHED: ErrorCode.LLM_CRASHED,
    FailureCause.HUNG: ErrorCode.LLM_TIMEOUT,
    FailureCause.BAD_OUTPUT: ErrorCode.LLM_BAD_OUTPUT,
    FailureCause.TRUNCATED: ErrorCode.LLM_TRUNCATED,
    FailureCause.SPAWN: ErrorCode.LLM_UNAVAILABLE,
}


class ChildFailure(Exception):
    """The LLM child failed the batch.

    ``message`` may reach clients, so it never holds what the child wrote: its stderr or a
    malformed line could carry anything it can read. Those go in ``detail``, which is only logged.
    """

    def __init__(self, cause: FailureCause, message: str, detail: str = "") -> None:
        super().__init__(f"{message}{detail}")
        self.cause = cause
        self.message = message
        self.detail = detail


class Launcher(Protocol):
    """How a batch's LLM child gets started (worker/spare.py)."""

    async def start(self, paths: list[str]) -> ChildProcess:
        """A child running the batch whose context files are ``paths``."""
        ...


class ChildProcess:
    """An LLM child in a process group of its own, with the tail of its stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._stderr_tail: deque[bytes] = deque(maxlen=20)
        self._stderr_reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def spawn(cls, argv: list[str], *, stdin: int, env: dict[str, str]) -> ChildProcess:
        """Start ``argv`` (stdin: asyncio.subprocess.PIPE or DEVNULL) with exactly ``env``;
        ChildFailure if it can't."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ChildFailure(
                FailureCause.SPAWN, "cannot start the LLM command", f": {argv[0]!r}: {exc}"
            ) from exc
        return cls(proc)

    def stderr_tail(self) -> str:
        """``; stderr: ...`` with the last lines it wrote, or nothing."""
        tail = b"".join(self._stderr_tail).decode("utf-8", "replace").strip()
        return f"; stderr: {tail[-500:]}" if tail else ""

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self._stderr_tail.append(line)

    async def stop(self) -> None:
        """Terminate the process group, then kill it; reap the child. Safe to call twice."""
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), _KILL_GRACE_S)
            except TimeoutError:
                _signal_group(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        else:  # the leader is gone; its group may not be
            _signal_group(self.proc.pid, signal.SIGKILL)
        # A grandchild that left the process group may hold stderr open: stop reading.
        done, _ = await asyncio.wait({self._stderr_reader}, timeout=_KILL_GRACE_S)
        if not done:
            self._stderr_reader.cancel()


class LlmChild:
    """The LLM child of one batch: read its output in chunks of decoded lines."""

    def __init__(self, process: ChildProcess, batch_size: int, deadline: float) -> None:
        self.process = process
        self.proc = process.proc
        self.batch_size = batch_size
        self.deadline = deadline

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, launcher: Launcher, contexts: list[str], *, tmp_root: str | None, timeout_s: float
    ) -> AsyncIterator[LlmChild]:
        """Write the context files and start the child; on exit stop it and remove the files."""
        batch_dir = Path(tempfile.mkdtemp(prefix=f"{BATCH_DIR_PREFIX}{os.getpid()}-", dir=tmp_root))
        try:
            paths = _write_context_files(batch_dir, contexts)
            process = await launcher.start(paths)
            try:
                yield cls(process, len(contexts), asyncio.get_running_loop().time() + timeout_s)
            finally:
                await process.stop()
        finally:
            shutil.rmtree(batch_dir, ignore_errors=True)

    async def chunks(self) -> AsyncIterator[list[ChildLine]]:
        """Decoded stdout lines, in chunks of what was available at once, until a clean exit.

        Raises ChildFailure when the child writes a malformed line, outlives the batch deadline,
        or exits non-zero.
        """
        assert self.proc.stdout is not None
        buffer = b""
        while True:
            data = await self._before_deadline(self.proc.stdout.read(65536))
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_LINE_BYTES:
                raise ChildFailure(
                    FailureCause.BAD_OUTPUT,
                    f"a line longer than {MAX_LINE_BYTES} bytes",
                    self.process.stderr_tail(),
                )
            if lines:
                decoded, bad = self._decode_all(lines)
                if decoded:  # the lines before a malformed one still count: they are relayed
                    yield decoded
                if bad is not None:
                    raise bad
        if buffer:
            raise ChildFailure(
                FailureCause.BAD_OUTPUT,
                "output ended in the middle of a line",
                self.process.stderr_tail(),
            )
        code = await self._before_deadline(self.proc.wait())
        if code != 0:
            raise ChildFailure(
                FailureCause.CRASHED,
                f"the LLM exited with status {code}",
                self.process.stderr_tail(),
            )

    def _decode_all(self, lines: list[bytes]) -> tuple[list[ChildLine], ChildFailure | None]:
        """The lines decoded up to the first malformed one, and the failure it is, if any."""
        decoded = []
        for line in lines:
            try:
                decoded.append(decode_line(line, self.batch_size))
            except ProtocolError as exc:
                failure = ChildFailure(
                    FailureCause.BAD_OUTPUT,
                    "malformed output",
                    f": {exc}{self.process.stderr_tail()}",
                )
                failure.__cause__ = exc
                return decoded, failure
        return decoded, None

    async def _before_deadline(self, awaitable: Awaitable[T]) -> T:
        # asyncio.timeout_at, not wait_for: on Python 3.11, wait_for swallows a cancellation that
        # arrives as the read completes (CPython gh-86296), and a cancelled batch (drain time
        # over) would run on to its end. tests/worker/test_child.py reproduces it.
        try:
            async with asyncio.timeout_at(self.deadline):
                return await awaitable
        except TimeoutError:
            raise ChildFailure(
                FailureCause.HUNG,
                "the LLM did not finish within the batch deadline",
                self.process.stderr_tail(),
            ) from None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _write_context_files(batch_dir: Path, contexts: list[str]) -> list[str]:
    paths = []
    for i, context in enumerate(contexts):
        path = batch_dir / f"context-{i}.b64"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(encode_context_file(context))
        paths.append(str(path))
    return paths


def remove_stale_batch_dirs(tmp_root: str | None) -> int:
    """Remove batch directories left by worker processes that no longer exist (after SIGKILL).

    Called at start-up, before this process made any: a directory named with this process's own
    pid was left by an earlier process with the same pid (in a container the worker is always
    pid 1, and an emptyDir outlives the container).
    """
    root = Path(tmp_root or tempfile.gettempdir())
    removed = 0
    for path in root.glob(f"{BATCH_DIR_PREFIX}*"):
        pid_text = path.name.removeprefix(BATCH_DIR_PREFIX).split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
