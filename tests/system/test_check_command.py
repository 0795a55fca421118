"""`llm-batcher check` against the real API, worker and mock: the verdict the chart's `helm test`
relies on. One line out, OK or FAIL with the reason; exit status 0 or 1."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from tests.support.processes import BIN, Stack, start_together

pytestmark = pytest.mark.system


async def check(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `llm-batcher check URL ARGS` as the hook pod does (``env``: its extra variables)."""
    argv = [str(BIN / "llm-batcher"), "check", url, "--timeout-s", "20", *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMB_")} | (env or {})
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False, env=environ
    )
    assert result.stdout.count("\n") == 1, result.stdout + result.stderr  # one verdict line
    return result


async def test_check_passes_a_well_formed_answer_and_names_a_failed_task(stack: Stack) -> None:
    api, _ = await start_together(stack.api(), stack.worker())
    await stack.wait_ready(api)

    ok = await check(api.url, "--expect-mock")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: ") and "(batch of 1)" in ok.stdout, ok.stdout
    assert "llm-batcher check" in ok.stdout  # the default context, echoed by the mock

    plain = await check(api.url, "--context", "a b c")  # no expectation of the answer
    assert plain.returncode == 0 and plain.stdout.startswith("OK: 3 tokens"), plain.stdout

    filler = await check(api.url, "--context", "@mock extra_tokens=3\nmy own context")
    assert filler.returncode == 0 and "6 tokens" in filler.stdout, filler.stdout
    expected = await check(api.url, "--context", "@mock extra_tokens=3\nmine", "--expect-mock")
    assert expected.returncode == 0 and "4 tokens" in expected.stdout, expected.stdout

    crash = await check(api.url, "--context", "@mock fail=exit fail_after=1\nx y z")
    assert crash.returncode == 1, crash.stdout + crash.stderr
    assert crash.stdout.startswith("FAIL: the task failed: llm_crashed"), crash.stdout


async def test_check_fails_on_an_answer_that_is_not_an_event_stream(stack: Stack) -> None:
    worker = await stack.worker()  # its health port answers /generate with a plain 404
    result = await check(f"http://127.0.0.1:{worker.port}", "--expect-mock")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL: GET ") and "not text/event-stream" in result.stdout


async def test_check_fails_when_the_api_is_gone(stack: Stack) -> None:
    api = await stack.api()
    stack.stop()
    result = await check(api.url, "--expect-mock")
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAIL: GET {api.url}/generate: "), result.stdout


async def test_check_sends_the_first_api_key_of_the_api_variables(stack: Stack) -> None:
    api, _ = await start_together(stack.api(api_keys="first-key,second-key"), stack.worker())
    await stack.wait_ready(api)
    refused = await check(api.url, "--expect-mock")
    assert refused.returncode == 1 and "answered 401" in refused.stdout, refused.stdout
    ok = await check(api.url, "--expect-mock", env={"LLMB_API_KEYS": "first-key,other"})
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stdout + ok.stderr


async def test_check_checks_the_metrics_the_autoscaler_needs(stack: Stack) -> None:
    api, _ = await start_together(stack.api(), stack.worker())
    await stack.wait_ready(api)
    metrics = f"{api.url}/metrics"
    ok = await check(api.url, "--metrics-url", metrics)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.rstrip().endswith(f"{metrics} exports llm_batcher_queue_depth"), ok.stdout

    absent = await check(api.url, "--metrics-url", metrics, "--expect-metric", "no_such_metric")
    assert absent.returncode == 1, absent.stdout
    assert absent.stdout.startswith(f"FAIL: {metrics} exports no no_such_metric"), absent.stdout

    gone = await check(api.url, "--metrics-url", f"{api.url}/no-metrics-here")
    assert gone.returncode == 1 and gone.stdout.startswith("FAIL: GET "), gone.stdout


async def test_check_says_when_no_worker_is_live(stack: Stack) -> None:
    api = await stack.api()  # ready, and queueing, without a worker
    result = await check(api.url, "--timeout-s", "1")
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAIL: GET {api.url}/generate: "), result.stdout
    assert "no live worker" in result.stdout, result.stdout
