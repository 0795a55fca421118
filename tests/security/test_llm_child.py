"""What the LLM child sees and what clients see of it (issue: a child that printed its
environment put the Redis password into a client-visible error event)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from llm_batcher.local.embedded_redis import EmbeddedRedis
from tests.security.conftest import REDIS_PASSWORD
from tests.support.processes import Stack
from tests.support.sse import generate
from tests.support.waiting import eventually

pytestmark = pytest.mark.system

PASSWORD = REDIS_PASSWORD
# Prints what a hostile or careless LLM could: its environment, on stderr and on stdout (a
# malformed line), and saves it where the test can look; then fails.
LEAKY_LLM = """\
import json, os, sys
env = dict(os.environ)
with open(env.get("LEAK_TO", os.devnull), "w") as f:
    json.dump(env, f)
print("env:", env.get("LLMB_REDIS_PASSWORD"), env.get("LLMB_REDIS_URL"), file=sys.stderr)
print("not json", env.get("LLMB_REDIS_PASSWORD"), flush=True)
sys.exit(3)
"""


async def test_the_child_gets_no_secret_and_clients_get_no_stderr(
    secret_redis: EmbeddedRedis,
    key_prefix: str,
    tmp_path: Path,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "leaky_llm.py"
    script.write_text(LEAKY_LLM)
    leaked = tmp_path / "child-env.json"
    monkeypatch.setenv("LEAK_TO", str(leaked))  # the worker inherits it; LLMB_LLM_ENV passes it on
    monkeypatch.setenv("UNLISTED_TOKEN", "not-for-the-child")
    stack = Stack(secret_redis.url, key_prefix, tmp_path)
    try:
        api = await stack.api(redis_password=PASSWORD)
        worker = await stack.worker(
            redis_password=PASSWORD, llm_command=f"{sys.executable} {script}", llm_env="LEAK_TO"
        )
        await stack.wait_ready(api)
        stream = await generate(client, api.url, "@mock ttft_ms=0\nmy question")
        error = stream.assert_error()
        await eventually(lambda: "env:" in worker.proc.log(), 10, "the stderr tail in the log")
        worker_log = worker.proc.log()
    finally:
        stack.stop()

    # The client: the error code and a message naming the batch, and nothing the child wrote.
    assert error["code"] == "llm_bad_output"
    message = str(error["message"])
    assert PASSWORD not in message and "env:" not in message and "not json" not in message
    batch_id = message.split("worker log of batch ", 1)[1].split(" ", 1)[0]
    assert f"batch {batch_id}" in worker_log  # the operator finds the batch from the message
    # The child: the allowlist plus what LLMB_LLM_ENV names; no Redis password, URL or prefix.
    env = json.loads(leaked.read_text())
    assert env["LEAK_TO"] == str(leaked)
    assert "PATH" in env
    assert not {k for k in env if k.startswith("LLMB_") and not k.startswith("LLMB_MOCK_")}
    assert PASSWORD not in json.dumps(env)
    assert "UNLISTED_TOKEN" not in env
    assert "env: None None" in worker_log  # what it wrote on stderr went to the worker log
