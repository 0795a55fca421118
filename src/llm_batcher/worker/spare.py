"""How a batch's LLM child starts: at batch time, or ahead of time as a spare waiting on stdin.

An LLM child pays its start-up (an interpreter, imports, maybe a model) before its first token;
started at batch time, every batch pays it. A spare child is started while the current batch
runs and waits for its batch on stdin (docs/protocol.md, part 1): when the next batch forms, the
worker writes the paths of its context files to the spare's stdin, one a line, then an empty
line, and closes stdin; the spare starts at once, and the next spare is started behind it.

A spare that exits while it waits (killed, crashed, a command that cannot read stdin) has not
seen a batch: it is reaped, its stderr logged, and another one is started after a delay that
doubles while spares keep dying. A batch that finds no live spare starts a fresh child and uses
it the same way. On close the spare is stopped with its process group and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from llm_batcher.settings import WorkerSettings
from llm_batcher.worker.child import ChildFailure, ChildProcess, FailureCause, Launcher
from llm_batcher.worker.environment import child_environment

log = logging.getLogger(__name__)

_RESPAWN_MIN_S = 0.1
_RESPAWN_MAX_S = 5.0


class ArgvLauncher:
    """Starts the child at batch time, with the context files appended to its command line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env

    async def start(self, paths: list[str]) -> ChildProcess:
        return await ChildProcess.spawn(
            [*self.argv, *paths], stdin=asyncio.subprocess.DEVNULL, env=self.env
        )

    def open(self) -> None:
        """Nothing to start ahead of time."""

    async def close(self) -> None:
        """Nothing left running between batches."""


class SpareLauncher:
    """Keeps one child started ahead of its batch, waiting for the batch's paths on stdin."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.spare: ChildProcess | None = None
        self._taken = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._spawning: asyncio.Future[ChildProcess] | None = None

    def open(self) -> None:
        """Start keeping a spare (from within the worker's event loop)."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="llm-spare")
            self._keeper.add_done_callback(_log_crash)

    async def start(self, paths: list[str]) -> ChildProcess:
        """Hand the batch to the spare (or, without a live one, to a fresh child)."""
        child = self._take()
        for _ in range(2):
            if child is None:
                child = await self._spawn()
            try:
                await _hand(child, paths)
            except (BrokenPipeError, ConnectionResetError):
                # It exited before reading its batch, so it never ran it: use another one.
                log.warning("the LLM exited before reading its batch%s", child.stderr_tail())
                await child.stop()
                child = None
                continue
            except BaseException:
                await child.stop()
                raise
            return child
        raise ChildFailure(FailureCause.CRASHED, "the LLM exited before reading its batch")

    def _take(self) -> ChildProcess | None:
        child, self.spare = self.spare, None
        if child is not None:
            self._taken.set()
        return child

    async def close(self) -> None:
        """Stop keeping a spare; stop and reap the spare (and one being started). Idempotent."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._spawning is not None:
            # The keeper was cancelled while a spawn was under way: the process may exist.
            with contextlib.suppress(ChildFailure, asyncio.CancelledError):
                started = await self._spawning
                await started.stop()
            self._spawning = None
        if self.spare is not None:
            await self.spare.stop()
            log.info("spare LLM %d stopped", self.spare.proc.pid)
            self.spare = None

    async def _spawn(self) -> ChildProcess:
        return await ChildProcess.spawn(self.argv, stdin=asyncio.subprocess.PIPE, env=self.env)

    async def _keep(self) -> None:
        """Start a spare; when it is taken, start the next; when it dies, replace it."""
        delay_s = _RESPAWN_MIN_S
        while True:
            self._spawning = asyncio.ensure_future(self._spawn())
            try:
                spare = await asyncio.shield(self._spawning)
            except ChildFailure as failure:
                log.warning("cannot start a spare LLM (%s); retrying in %.1f s", failure, delay_s)
                self._spawning = None
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RESPAWN_MAX_S)
                continue
            self._spawning = None
            self.spare = spare
            self._taken.clear()
            if await self._taken_before_exit(spare):
                delay_s = _RESPAWN_MIN_S
                continue
            self.spare = None
            log.warning(
                "the spare LLM exited with status %s while waiting for a batch%s; "
                "starting another in %.1f s",
                spare.proc.returncode, spare.stderr_tail(), delay_s,
            )  # fmt: skip
            await spare.stop()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _RESPAWN_MAX_S)

    async def _taken_before_exit(self, spare: ChildProcess) -> bool:
        """Wait until a batch takes ``spare`` (True) or it exits while still the spare (False)."""
        taken = asyncio.create_task(self._taken.wait())
        exited = asyncio.create_task(spare.proc.wait())
        try:
            await asyncio.wait({taken, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            taken.cancel()
            exited.cancel()
        return self.spare is not spare  # start() took it


async def _hand(child: ChildProcess, paths: list[str]) -> None:
    """Write the batch's paths to the child's stdin, one a line, an empty line, then EOF."""
    stdin = child.proc.stdin
    assert stdin is not None
    stdin.write(b"".join(os.fsencode(path) + b"\n" for path in paths) + b"\n")
    await stdin.drain()
    stdin.close()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the spare keeper stopped", exc_info=task.exception())


def make_launcher(settings: WorkerSettings) -> ArgvLauncher | SpareLauncher:
    """The launcher the settings ask for (LLMB_LLM_FILES)."""
    env = child_environment(os.environ, settings.llm_env_names)
    if settings.llm_files_on_stdin:
        return SpareLauncher(settings.llm_argv, env)
    return ArgvLauncher(settings.llm_argv, env)


__all__ = ["ArgvLauncher", "Launcher", "SpareLauncher", "make_launcher"]
