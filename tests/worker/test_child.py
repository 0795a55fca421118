"""LlmChild, in process: a cancelled batch stops, even when output arrives at the same moment;
lines before a malformed one are kept."""

from __future__ import annotations

import asyncio
import os
import select
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from llm_batcher.codec import ChildLine, TokenLine
from llm_batcher.worker.child import ChildFailure, FailureCause, LlmChild
from llm_batcher.worker.spare import ArgvLauncher
from tests.support.waiting import eventually

# Writes one token line, then waits for the gap before the next one.
CHATTY_LLM = """
import json, sys, time
for i in range(1000):
    sys.stdout.write(json.dumps({{"index": 0, "token": f"t{{i}} "}}) + "\\n")
    sys.stdout.flush()
    time.sleep({gap_s})
"""


def run_script(script: Path, tmp_path: Path) -> AbstractAsyncContextManager[LlmChild]:
    """A batch of one context run by a Python script as its LLM."""
    launcher = ArgvLauncher([sys.executable, str(script)], dict(os.environ))
    return LlmChild.run(launcher, ["ctx"], tmp_root=str(tmp_path), timeout_s=30)


async def test_cancel_arriving_with_output_stops_the_batch(tmp_path: Path) -> None:
    """The drain deadline cancels a batch at an arbitrary moment, possibly in the same event
    loop turn in which the child's next line arrives. The cancellation must still win (asyncio
    on Python 3.11: wait_for returns the result instead, gh-86296)."""
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY_LLM.format(gap_s=0.3))
    chunks: list[object] = []
    children: list[LlmChild] = []

    async def consume() -> None:
        async with run_script(script, tmp_path) as child:
            children.append(child)
            async for lines in child.chunks():
                chunks.append(lines)

    batch = asyncio.create_task(consume())
    try:
        await eventually(lambda: len(chunks) == 1, 10, "the first token")
        # Block the event loop until the next line is in the pipe. In the next loop turn the
        # pipe transport reads it and schedules its delivery to the stream reader; a timer due
        # in that same turn schedules the cancel right after the delivery. So the line wakes
        # the read up and the cancel lands before the batch task has run again.
        transport = children[0].proc._transport  # type: ignore[attr-defined]
        fd = transport.get_pipe_transport(1).get_extra_info("pipe").fileno()
        readable, _, _ = select.select([fd], [], [], 5)
        assert readable, "the child wrote nothing"
        loop = asyncio.get_running_loop()
        loop.call_later(0, lambda: loop.call_soon(batch.cancel))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(batch), 5)
    finally:
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
    assert children[0].proc.returncode is not None  # the child was stopped and reaped


async def test_lines_before_a_malformed_one_in_the_same_read_are_kept(tmp_path: Path) -> None:
    """Two tokens and a malformed line in one write: the tokens come out, then the failure, so
    that what the client sees and the error's "after N tokens" match what the LLM wrote."""
    script = tmp_path / "garbled.py"
    script.write_text(
        "import sys\n"
        'sys.stdout.write(\'{"index": 0, "token": "a "}\\n{"index": 0, "token": "b "}\\n%%\\n\')\n'
    )
    chunks: list[list[ChildLine]] = []
    with pytest.raises(ChildFailure) as failed:
        async with run_script(script, tmp_path) as child:
            async for lines in child.chunks():
                chunks.append(lines)
    assert failed.value.cause is FailureCause.BAD_OUTPUT
    tokens = [line for chunk in chunks for line in chunk]
    assert [line.token for line in tokens if isinstance(line, TokenLine)] == ["a ", "b "]
