"""`llm-batcher check` against the whole system: the verdict the chart's `helm test` relies on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import Stack, start_together

pytestmark = pytest.mark.system

LLM_BATCHER = Path(sys.executable).parent / "llm-batcher"


async def _check(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(LLM_BATCHER), "check", url, "--timeout-s", "20", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
    )


async def test_check_passes_a_mock_answer_and_names_a_failed_task(stack: Stack) -> None:
    api, _ = await start_together(stack.api(), stack.worker())
    await stack.wait_ready(api)

    ok = await _check(api.url, "--expect-mock")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: ") and ok.stdout.count("\n") == 1, ok.stdout
    assert "(batch of 1)" in ok.stdout and "llm-batcher check" in ok.stdout

    plain = await _check(api.url, "--context", "a b c")  # no expectation of the answer
    assert plain.returncode == 0 and "OK: 3 tokens" in plain.stdout, plain.stdout

    crash = await _check(api.url, "--context", "@mock fail=exit fail_after=1\nx y z")
    assert crash.returncode == 1, crash.stdout + crash.stderr
    assert crash.stdout.startswith("FAIL: the task failed: llm_crashed"), crash.stdout

    filler = await _check(api.url, "--context", "@mock extra_tokens=2\nx y")
    assert filler.returncode == 0, filler.stdout  # without --expect-mock any answer will do
    assert "4 tokens" in filler.stdout


async def test_check_fails_when_the_api_is_gone(stack: Stack) -> None:
    api = await stack.api()
    url = api.url
    stack.stop()
    result = await _check(url, "--expect-mock")
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAIL: GET {url}/generate: "), result.stdout
