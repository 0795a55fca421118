"""`llm-batcher up` as a subprocess of the test, its output read line by line as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.processes import BIN, alive, descendants
from tests.support.waiting import eventually


@dataclass
class Up:
    """`llm-batcher up` and the lines it has printed so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, args: list[str], cwd: Path, env: dict[str, str]) -> Up:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "llm-batcher"), "up", *args,
            cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        up = cls(proc)
        up.reader = asyncio.create_task(up._read())
        return up

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def wait_line(self, pattern: str, timeout_s: float = 30, count: int = 1) -> str:
        """Wait until ``count`` lines of the output match ``pattern``; returns the last one."""

        def seen() -> bool:
            if self.proc.returncode is not None and self.reader and self.reader.done():
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.output()}")
            return len(self.matching(pattern)) >= count

        await eventually(seen, timeout_s, f"a line matching {pattern!r}")
        return self.matching(pattern)[count - 1]

    async def api_url(self, timeout_s: float = 30) -> str:
        """The API's base URL on 127.0.0.1, from the test page line `up` prints once the API is
        ready (run with `--port 0`, `up` binds a free port and says which)."""
        line = await self.wait_line(r"test page: http://localhost:\d+/", timeout_s)
        port = re.search(r"http://localhost:(\d+)/", line)
        assert port is not None, line
        return f"http://127.0.0.1:{port[1]}"

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM `up` and wait for it to exit (bounded); returns its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code

    async def close(self) -> None:
        """However the test went: stop `up`, then kill anything it left behind."""
        left = descendants(self.proc.pid)
        if self.proc.returncode is None:
            try:
                await self.terminate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        for proc in alive(left):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    def output(self) -> str:
        return "\n".join(self.lines[-200:])


def up_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of `up`: no LLMB_* from outside, temp files in a folder of the test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")}
    env.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1", **extra)
    return env
