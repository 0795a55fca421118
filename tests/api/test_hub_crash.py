"""The pub/sub reader crashes on a malformed announcement: it is restarted at once, the crash is
logged and counted, and open streams keep getting their entries through pub/sub."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis

from llm_batcher import metrics
from llm_batcher.api.hub import RESYNC, ResultHub
from llm_batcher.protocol.keys import Keys, token_entry_id
from llm_batcher.protocol.results import ResultEntry


def crashes(task: str) -> float:
    value = metrics.API_REGISTRY.get_sample_value(
        "llm_batcher_background_task_crashes_total", {"task": task}
    )
    return value or 0.0


async def test_a_crashed_reader_restarts_and_streams_keep_their_entries(
    redis: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(key_prefix)
    hub = ResultHub(redis, keys)
    await hub.start()
    before = crashes("result-hub")
    try:
        async with hub.subscribe("t1", timeout_s=5) as sub:
            with caplog.at_level(logging.ERROR, logger="llm_batcher.background"):
                await redis.publish(keys.result("t1"), b"{not json")  # the reader raises on it
                token = {"id": token_entry_id(0), "kind": "token", "text": "after"}
                await redis.publish(keys.result("t1"), json.dumps(token))
                # The restarted reader tells the stream to re-read Redis (the message it was
                # dispatching is lost), then relays the next announcement as usual. The dead
                # reader of old gave nothing: the stream only woke on its 5 s liveness poll.
                first = await sub.get(timeout_s=10)
                second = await sub.get(timeout_s=10)
            assert first == RESYNC
            assert isinstance(second, ResultEntry) and second.text == "after"
            assert crashes("result-hub") == before + 1
            crash_logs = [r for r in caplog.records if "result-hub crashed" in r.getMessage()]
            assert len(crash_logs) == 1 and crash_logs[0].exc_info is not None  # the traceback
    finally:
        await hub.stop()
