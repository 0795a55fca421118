"""Structured logs: with LLMB_LOG_FORMAT=json every line is one JSON object, and the lines about
a task carry its id (and, on the worker, the batch id)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from llm_batcher import logs
from tests.support.processes import start_api, start_worker
from tests.support.sse import generate
from tests.support.waiting import eventually


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails if any line is not JSON


@pytest.mark.system
async def test_json_logs_carry_task_and_batch_ids(
    redis: Redis, redis_url: str, key_prefix: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    settings = {"log_format": "json", "log_level": "INFO"}
    worker, _ = await start_worker(redis_url, key_prefix, tmp_path, **settings)
    api, base = await start_api(redis_url, key_prefix, tmp_path, **settings)
    try:
        end = (await generate(client, base, "@mock ttft_ms=0 itl_ms=0\nlog me")).terminal
        kind, data = end.kind, end.data
    finally:
        api.stop()
        worker.stop()
    assert kind == "done"
    task_id = data["task_id"]

    api_lines = _json_lines(api.log())
    worker_lines = _json_lines(worker.log())
    for entry in api_lines + worker_lines:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    api_task = [e for e in api_lines if e.get("task_id") == task_id]
    # one INFO line per request, when it ends; the `queued` line is DEBUG
    assert [e["message"] for e in api_task if "ended: done" in str(e["message"])]
    assert not any("queued" in str(e["message"]) for e in api_task)
    worker_task = [e for e in worker_lines if e.get("task_id") == task_id]
    assert worker_task and all(e.get("batch_id") for e in worker_task)
    assert not any(e["level"] == "DEBUG" for e in api_lines + worker_lines)


def test_text_format_appends_the_ids(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logging.getLogger("llm_batcher.test").info(
        "task %s done", "t-1", extra={"task_id": "t-1", "batch_id": "b-1"}
    )
    logging.getLogger().handlers[0].flush()
    err = capsys.readouterr().err
    assert "task t-1 done [task_id=t-1 batch_id=b-1]" in err
    logging.getLogger().handlers.clear()


def _buffered() -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    handler = logs.BufferedStreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger(f"llm_batcher.test.buffered.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return stream, logger


async def test_info_lines_are_written_together_soon_after() -> None:
    stream, logger = _buffered()
    for i in range(3):
        logger.info("line %d", i)
    await eventually(lambda: stream.getvalue().count("\n") == 3, what="the buffered lines")
    assert [line.rsplit(" ", 1)[-1] for line in stream.getvalue().splitlines()] == ["0", "1", "2"]


def test_a_warning_is_written_at_once_with_the_lines_before_it() -> None:
    stream, logger = _buffered()
    logger.info("before")
    logger.warning("trouble")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("before") and lines[1].endswith("trouble")


def test_a_full_buffer_is_written_at_once() -> None:
    stream, logger = _buffered()
    for i in range(logs.MAX_LINES):
        logger.info("line %d", i)
    assert stream.getvalue().count("\n") == logs.MAX_LINES
