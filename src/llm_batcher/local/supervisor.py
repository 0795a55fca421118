"""Supervising child processes for `llm-batcher up`: prefixed logs, readiness, restarts, stop.

Each child runs in a session of its own so that a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order. On Linux each child also gets SIGTERM if the
supervisor itself dies, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import httpx

from llm_batcher.local.procs import die_with_parent

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5  # before the first restart; doubled for each quick death after it
MAX_BACKOFF_S = 10.0


@dataclass
class ChildSpec:
    """What to run, what to call it, and how to tell it is ready. ``sockets``: listening
    sockets every start of the child inherits (listeners.py); closed once it stops for good."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str | None = None
    stop_timeout_s: float = 30.0
    stable_s: float = 30.0  # a child that ran this long before it died restarts at the first pace
    sockets: tuple[socket.socket, ...] = ()


@dataclass
class Supervised:
    """One child kept running until stop() is called."""

    spec: ChildSpec
    say: Callable[[str], None]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    out: TextIO | None = None  # where the child's output goes; None means this process's stdout
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    _helpers: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self) -> None:
        """Start the child, restart it whenever it dies, until stopped: after FIRST_BACKOFF_S if
        it had run stable_s, else after a pause that doubles with each quick death in a row."""
        backoff = FIRST_BACKOFF_S
        try:
            while not self._stopping:
                started = time.monotonic()
                await self._start()
                assert self.proc is not None
                code = await self.proc.wait()
                if self._stopping:
                    break
                self.ready.clear()
                self.restarts += 1
                if time.monotonic() - started >= self.spec.stable_s:
                    # It had been running well: this death is not the latest of a crash loop,
                    # and must not wait as long as the tenth restart of one would.
                    backoff = FIRST_BACKOFF_S
                self.say(
                    f"!! {self.spec.name} exited with status {code}; restart in {backoff:.1f} s"
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            for sock in self.spec.sockets:
                sock.close()

    async def _start(self) -> None:
        preexec = die_with_parent if sys.platform.startswith("linux") else None
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            env=self.spec.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            pass_fds=[sock.fileno() for sock in self.spec.sockets],
        )
        # Kept in a field: a task nobody references may be garbage-collected mid-run.
        self._helpers = [asyncio.create_task(self._pump(self.proc))]
        if self.spec.ready_url:
            self._helpers.append(asyncio.create_task(self._watch_ready(self.proc)))
        else:
            self.ready.set()

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the child's output, each line prefixed with its name."""
        assert proc.stdout is not None
        width = 10
        out = sys.stdout if self.out is None else self.out
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.write(f"{self.spec.name:<{width}} | {line}\n")
            out.flush()

    async def _watch_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert self.spec.ready_url
        async with httpx.AsyncClient(timeout=1.0) as client:
            while proc.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.spec.ready_url)).status_code == 200:
                        self.ready.set()
                        return
                await asyncio.sleep(0.1)

    async def stop(self) -> int | None:
        """SIGTERM the child, wait for it to drain, SIGKILL it if it takes too long."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), self.spec.stop_timeout_s)
        except TimeoutError:
            limit = self.spec.stop_timeout_s
            self.say(f"!! {self.spec.name} still running after {limit:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await proc.wait()
