"""What a browser is told and what a hostile page can make it do (issue: the CSP was only a
<meta> tag on `/`; a cross-site `text/plain` POST queued a task; a rebound DNS name reached a
local API)."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import assert_nothing_queued
from tests.support.sse import after_task, raw_get, read_sse

pytestmark = pytest.mark.system


def assert_browser_headers(response: httpx.Response | httpx.Headers, what: str) -> None:
    headers = response if isinstance(response, httpx.Headers) else response.headers
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, what
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "no-referrer", what


async def test_every_response_carries_the_browser_headers(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    api = await stack.api()
    for path in ("/", "/healthz", "/readyz", "/metrics", "/static/app.js", "/docs", "/nowhere"):
        assert_browser_headers(await client.get(f"{api.url}{path}"), path)
    assert (await client.get(f"{api.url}/nowhere")).status_code == 404
    refused = await client.get(f"{api.url}/generate")  # the fast path's refusal
    assert refused.status_code == 422
    assert_browser_headers(refused, "a refusal of /generate")
    stream = await read_sse(
        client, "GET", f"{api.url}/generate", params={"context": "hi"}, until=after_task
    )
    assert stream.status == 200
    assert_browser_headers(stream.headers, "an SSE stream")
    # The HTTP parser's own refusal, below the app: a URL too long to parse.
    too_long = await raw_get(api.url, b"/generate?context=" + b"x" * 1_000_000)
    assert too_long.status == 400
    assert_browser_headers(httpx.Headers(too_long.headers), "the parser's 400")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_a_cross_site_simple_post_is_refused_and_queues_nothing(
    stack: Stack, client: httpx.AsyncClient, redis: Redis, content_type: str | None
) -> None:
    api = await stack.api()
    # What a hostile page's <form> or fetch(..., {mode: "no-cors"}) can send without a preflight.
    headers = {"Content-Type": content_type} if content_type else {}
    refused = await read_sse(
        client, "POST", f"{api.url}/generate", content=b'{"context": "from evil"}', headers=headers
    )
    assert refused.status == 415
    assert refused.body["code"] == "unsupported_media_type"
    await assert_nothing_queued(redis, stack.prefix)
    accepted = await read_sse(
        client,
        "POST",
        f"{api.url}/generate",
        json={"context": "from the page"},
        headers={"Content-Type": "application/json; charset=utf-8"},
        until=after_task,
    )
    assert accepted.status == 200


async def test_a_rebound_host_name_is_refused(stack: Stack, client: httpx.AsyncClient) -> None:
    api = await stack.api(trusted_hosts="localhost,127.0.0.1,[::1]")
    # A page on attacker.example rebinds its name to 127.0.0.1: the browser sends its Host.
    for path in ("/generate?context=x", "/stats", "/healthz"):
        refused = await client.get(f"{api.url}{path}", headers={"Host": "attacker.example:8000"})
        assert refused.status_code == 421, path
        assert refused.json()["code"] == "untrusted_host"
        assert_browser_headers(refused, path)
    port = api.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert (await client.get(f"{api.url}/healthz", headers={"Host": host})).status_code == 200
