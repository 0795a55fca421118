"""The `helm test` script (files/helm-test.py), run as the hook pod runs it (`python3 -c`): against
a small local SSE server it passes a well-formed echo and fails, with the reason, on the answers
the stream contract rules out; against the real API and worker it passes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.deploy.support import CHART_DIR
from tests.helpers import start_api, start_worker, wait_http

SCRIPT = (CHART_DIR / "files" / "helm-test.py").read_text()


def _frames(context: str, mode: str) -> list[str]:
    """The SSE frames the fake API answers: the contract, or one way of breaking it."""
    body = context.split("\n", 1)[1] if context.startswith("@mock") else context
    words = body.split(" ")
    tokens = [w + " " for w in words[:-1]] + [words[-1]]
    if mode == "wrong-echo":
        tokens[0] = "Hello "
    task = "7f06c2d2-34de-4236-863a-e26748456437"
    frames = [f'id: {task}:-1\nevent: task\ndata: {{"task_id": "{task}"}}\nretry: 1000\n\n']
    frames.append(": ping\n\n")
    ids = list(range(len(tokens)))
    if mode == "gap":
        ids[1] += 1
    for index, token in zip(ids, tokens, strict=True):
        frames.append(f"id: {task}:{index}\nevent: token\ndata: {json.dumps({'text': token})}\n\n")
    done = {"task_id": task, "text": "".join(tokens), "tokens": len(tokens), "batch_size": 1}
    if mode == "error":
        frames.append('event: error\ndata: {"code": "llm_crashed", "message": "exit 3"}\n\n')
    elif mode != "no-terminal":
        frames.append(f"event: done\ndata: {json.dumps(done)}\n\n")
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
        [sys.executable, "-c", SCRIPT, url, "10", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("flags", [("--echo",), ()])
def test_a_well_formed_answer_passes(api_url: str, flags: tuple[str, ...]) -> None:
    _FakeApi.mode = "ok"
    result = _run(api_url, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("wrong-echo", "expected the echo"),
        ("gap", "in order"),
        ("error", "the task failed: llm_crashed"),
        ("no-terminal", "one terminal event"),
        ("json", "not text/event-stream"),
    ],
)
def test_a_broken_answer_fails_with_its_reason(api_url: str, mode: str, reason: str) -> None:
    _FakeApi.mode = mode
    result = _run(api_url, "--echo")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL: ") and reason in result.stdout, result.stdout


def test_an_unreachable_api_fails() -> None:
    result = _run("http://127.0.0.1:9", "--echo")  # the discard port: nothing listens
    assert result.returncode == 1 and "FAIL: GET" in result.stdout


async def test_the_script_passes_against_the_real_api_and_worker(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """The same script against `llm-batcher api` and `llm-batcher worker` on a real Redis: what
    the hook pod does in the cluster, with the mock echoing the context."""
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path)
    try:
        api, base_url = await start_api(redis_url, key_prefix, tmp_path)
        try:
            await wait_http(f"{base_url}/readyz", api)  # ready: Redis answers, a worker is live
            result = await asyncio.to_thread(_run, base_url, "--echo")
            assert result.returncode == 0, result.stdout + result.stderr + api.log()
            assert result.stdout.startswith("OK: ") and "helm test" in result.stdout
        finally:
            api.stop()
    finally:
        worker.stop()
