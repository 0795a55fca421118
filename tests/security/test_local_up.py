"""`llm-batcher up` on one machine: its embedded Valkey has a password per run and a private data
folder (issue: no password, `protected-mode no`, an AOF holding every context at 0644), and its API
answers only local Host names (DNS rebinding)."""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import redis.exceptions
from redis.asyncio import Redis

from tests.support.sse import generate
from tests.support.up import Up

pytestmark = pytest.mark.system

RunUp = Callable[..., Awaitable[Up]]


async def test_up_embedded_valkey_needs_its_password_and_keeps_its_data_private(
    run_up: RunUp, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    up = await run_up(
        "--port", "0", "--workers", "1", "--data-dir", str(data),
        "--mock-ttft-ms", "0", "--mock-itl-ms", "0",
    )  # fmt: skip
    line = await up.wait_line(r"embedded Redis-compatible server \(Valkey\) at (redis://\S+),")
    url = line.split(" at ", 1)[1].split(",", 1)[0]
    base = await up.api_url()
    await up.wait_line(r"^up +\| worker-1 ready$", 30)
    (await generate(client, base, "with a password")).assert_exact("with a password")
    # A page whose name was rebound to 127.0.0.1 is refused: `up` trusts only local names.
    port = base.rsplit(":", 1)[1]
    rebound = await client.get(f"{base}/stats", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 421

    # Another local user (or a page in a browser) tries the server without the password.
    async with Redis.from_url(url) as stranger:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await stranger.keys("*")
    config = (data / "redis" / "valkey.conf").read_text()
    password = config.split('requirepass "', 1)[1].split('"', 1)[0]
    assert len(password) >= 24
    async with Redis.from_url(url, password=password) as owner:
        assert await owner.ping()
    assert password not in "\n".join(up.lines)  # never printed
    for path in (data / "redis", data / "redis" / "valkey.conf"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
