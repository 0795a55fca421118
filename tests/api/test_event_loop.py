"""The API runs on uvloop (api/server.py): its C event loop and transports cost the API less CPU
per event than asyncio's (docs/benchmarks.md), and uvicorn would fall back to asyncio's loop,
silently, if it were left to choose and uvloop were missing."""

from __future__ import annotations

import uvloop

from llm_batcher.api.server import uvicorn_config
from llm_batcher.settings import ApiSettings


def test_the_api_is_served_on_uvloop() -> None:
    factory = uvicorn_config(ApiSettings()).get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
