"""The `helm test` hook: the pod runs `llm-batcher check` in the API image. The command, run as
the pod runs it, passes a well-formed mock answer and fails, with the reason, on the answers the
stream contract rules out (served by a small local SSE server); against the real API and worker
it passes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llm_batcher.check import mock_answer
from llm_batcher.cli import build_parser
from llm_batcher.contract import (
    DONE_FIELDS,
    done_event,
    encode,
    error_event,
    task_event,
    token_event,
)
from llm_batcher.mock.tokens import tokenize
from tests.chart.support import render_scenario
from tests.support.processes import start_api, start_worker, wait_http

CHECK = Path(sys.executable).parent / "llm-batcher"
TASK = "7f06c2d2-34de-4236-863a-e26748456437"


def _frames(context: str, mode: str) -> list[str]:
    """The SSE frames the fake API answers: the contract, or one way of breaking it."""
    tokens = tokenize(mock_answer(context))
    if mode == "wrong-echo":
        tokens[0] = "Hello "
    ids = list(range(len(tokens)))
    if mode == "gap":
        ids[1] += 1
    frames = [encode(task_event(TASK, -1, 1000)), ": ping\r\n\r\n"]
    frames += [encode(token_event(TASK, i, text)) for i, text in zip(ids, tokens, strict=True)]
    done = dict.fromkeys(DONE_FIELDS, 1)
    done.update(task_id=TASK, text="".join(tokens), tokens=len(tokens), worker="w-fake")
    if mode == "error":
        frames.append(encode(error_event("llm_crashed", "exit 3")))
    elif mode != "no-terminal":
        frames.append(encode(done_event(done)))
    return frames


class _FakeApi(BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/generate":
            self.send_error(404)
            return
        (context,) = urllib.parse.parse_qs(url.query)["context"]
        self.send_response(200)
        ctype = "application/json" if self.mode == "json" else "text/event-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Connection", "close")
        self.end_headers()
        for frame in _frames(context, self.mode):
            self.wfile.write(frame.encode())
            self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), "check", url, "--timeout-s", "10", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("flags", [("--expect-mock",), ()])
def test_a_well_formed_answer_passes(api_url: str, flags: tuple[str, ...]) -> None:
    _FakeApi.mode = "ok"
    result = _run(api_url, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ") and result.stdout.count("\n") == 1
    assert "from worker w-fake" in result.stdout


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("wrong-echo", "expected 'llm-batcher check"),
        ("gap", "not in order"),
        ("error", "the task failed: llm_crashed: exit 3"),
        ("no-terminal", "without a done or error event"),
        ("json", "not text/event-stream"),
    ],
)
def test_a_broken_answer_fails_with_its_reason(api_url: str, mode: str, reason: str) -> None:
    _FakeApi.mode = mode
    result = _run(api_url, "--expect-mock")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL: ") and reason in result.stdout, result.stdout
    assert result.stdout.count("\n") == 1


def test_an_unreachable_api_fails() -> None:
    result = _run("http://127.0.0.1:9", "--expect-mock")  # the discard port: nothing listens
    assert result.returncode == 1 and "FAIL: GET http://127.0.0.1:9/generate" in result.stdout


def test_the_mock_answer_is_the_body_of_the_context() -> None:
    assert mock_answer("@mock ttft_ms=0 itl_ms=10\nqueued,  batched\n") == "queued,  batched\n"
    assert mock_answer("no directive") == "no directive"
    assert mock_answer("@mock extra_tokens=2\nx").startswith("x ")


@pytest.mark.system
async def test_the_command_passes_against_the_real_api_and_worker(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """`llm-batcher check` against `llm-batcher api` and `llm-batcher worker` on a real Redis:
    what the hook pod does in the cluster, with the mock echoing the context."""
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path)
    try:
        api, base_url = await start_api(redis_url, key_prefix, tmp_path)
        try:
            await wait_http(f"{base_url}/readyz", api)  # ready: Redis answers, a worker is live
            result = await asyncio.to_thread(_run, base_url, "--expect-mock")
            assert result.returncode == 0, result.stdout + result.stderr + api.log()
            assert result.stdout.startswith("OK: ") and "llm-batcher check" in result.stdout
            custom = "@mock extra_tokens=3\nmy own context"
            result = await asyncio.to_thread(_run, base_url, "--context", custom, "--expect-mock")
            assert result.returncode == 0, result.stdout + result.stderr + api.log()
            assert "6 tokens" in result.stdout and "my own context" in result.stdout
        finally:
            api.stop()
    finally:
        worker.stop()


def test_the_hook_runs_the_check_command_on_the_api_service() -> None:
    hook = render_scenario("default").get("Pod", "llm-batcher-test")
    (container,) = hook["spec"]["containers"]
    command = container["command"]
    assert command == [
        "llm-batcher", "check", "http://llm-batcher-api:8000", "--timeout-s", "60",
        "--expect-mock",
    ]  # fmt: skip
    args = build_parser().parse_args(command[1:])
    assert (args.url, args.timeout_s, args.expect_mock) == ("http://llm-batcher-api:8000", 60, True)
    assert hook["spec"]["restartPolicy"] == "Never"
    assert hook["spec"]["activeDeadlineSeconds"] == 90


def test_the_hook_expects_the_mock_answer_only_with_the_mock() -> None:
    hook = render_scenario("custom-llm").get("Pod", "llmb-test")  # a real LLM command
    command = hook["spec"]["containers"][0]["command"]
    assert command == ["llm-batcher", "check", "http://llmb-api:8000", "--timeout-s", "60"]
