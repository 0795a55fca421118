"""The test page in a real browser (Chromium driven by Playwright): answers stream into cards,
several requests run as one batch, hostile text stays text, and failures show their code."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from redis.asyncio import Redis

from tests.support.processes import Stack
from tests.support.results import task_ids
from tests.support.tools import find_tool
from tests.support.waiting import eventually

CHROMIUM = find_tool("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NUMBER = re.compile(r"^\d+(\.\d)?$")
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__cspViolations.push(`CSP ${e.violatedDirective}: ${e.blockedURI || e.sample}`));
"""
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'

pytestmark = [
    pytest.mark.system,
    pytest.mark.browser,
    pytest.mark.requires_tool("chromium"),
]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@contextlib.asynccontextmanager
async def open_page(browser: Browser, url: str) -> AsyncIterator[Page]:
    """The test page at ``url``, with script errors and breaches of its CSP (an inline style the
    page set, say) collected and checked at the end."""
    context = await browser.new_context(base_url=url)
    await context.add_init_script(CSP_WATCH)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await tab.goto("/")
        yield tab
        errors += await tab.evaluate("window.__cspViolations")
    finally:
        await context.close()
    assert errors == [], errors


@pytest.fixture
async def page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    """The test page of a fresh API."""
    api = await stack.api()
    async with open_page(browser, api.url) as tab:
        yield tab


async def send(page: Page, context: str) -> None:
    await page.get_by_test_id("context").fill(context)
    await page.get_by_test_id("send").click()


async def test_an_answer_streams_into_a_card(page: Page, stack: Stack, redis: Redis) -> None:
    await stack.worker()
    answer = "tokens arrive one by one in the card"
    await send(page, "@mock ttft_ms=0 itl_ms=250\n" + answer)
    card = page.get_by_test_id("card")
    await expect(card).to_have_count(1)
    status = card.get_by_test_id("status")
    await expect(status).to_have_text("streaming")  # part of the answer is there, not all
    await expect(card.get_by_test_id("answer")).not_to_have_text("")
    await expect(status).to_have_text("done", timeout=10_000)
    await expect(card.get_by_test_id("answer")).to_have_text(answer)
    await expect(card.get_by_test_id("task-id")).to_have_text(UUID)
    await expect(card.get_by_test_id("batch-size")).to_have_text("1")
    await expect(card.get_by_test_id("tokens")).to_have_text(str(len(answer.split())))
    for metric in ("queue-ms", "ttft-ms", "total-ms"):
        await expect(card.get_by_test_id(metric)).to_have_text(NUMBER)
    await expect(card.get_by_test_id("error")).to_be_hidden()
    shown = await card.get_by_test_id("task-id").text_content()
    assert await task_ids(redis, stack.prefix) == {shown}


async def test_send_four_runs_them_as_one_batch(page: Page, stack: Stack) -> None:
    await stack.worker(max_batch=4, window_ms=3000)  # a full batch starts at once
    await page.get_by_test_id("context").fill("@mock ttft_ms=100 itl_ms=0\nmany")
    await page.get_by_test_id("count").fill("4")
    await page.get_by_test_id("send-many").click()
    cards = page.get_by_test_id("card")
    await expect(cards).to_have_count(4)
    for i in range(4):
        card = cards.nth(i)
        await expect(card.get_by_test_id("status")).to_have_text("done", timeout=10_000)
        await expect(card.get_by_test_id("batch-size")).to_have_text("4")
    answers = await page.get_by_test_id("answer").all_text_contents()
    assert sorted(answers) == [f"many #{i}" for i in range(1, 5)]
    ids = await page.get_by_test_id("task-id").all_text_contents()
    assert len(set(ids)) == 4


async def test_hostile_markup_is_shown_as_text(page: Page, stack: Stack) -> None:
    await stack.worker()
    await send(page, HOSTILE)
    card = page.get_by_test_id("card")
    await expect(card.get_by_test_id("status")).to_have_text("done", timeout=10_000)
    await expect(card.get_by_test_id("answer")).to_have_text(HOSTILE)
    assert await card.locator("img, script").count() == 0
    assert await page.evaluate("window.__pwned") is None


async def test_a_crashing_model_shows_the_error_code(page: Page, stack: Stack) -> None:
    await stack.worker()
    await send(page, "@mock fail=exit\nthis one crashes")
    card = page.get_by_test_id("card")
    await expect(card.get_by_test_id("status")).to_have_text("error", timeout=10_000)
    error = card.get_by_test_id("error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("llm_crashed")
    await expect(card.get_by_test_id("task-id")).to_have_text(UUID)


async def test_a_refused_request_shows_the_http_error(page: Page) -> None:
    await send(page, "")
    card = page.get_by_test_id("card")
    await expect(card.get_by_test_id("status")).to_have_text("error", timeout=10_000)
    await expect(card.get_by_test_id("error")).to_contain_text("422")


async def test_with_api_keys_the_page_asks_for_one_and_streams_with_it(
    browser: Browser, stack: Stack
) -> None:
    api = await stack.api(api_keys="page-key-6c1e9b0d")
    await stack.worker()
    async with open_page(browser, api.url) as tab:
        key = tab.get_by_test_id("api-key")
        await expect(key).to_be_hidden()  # nothing asked for until the server refuses
        await send(tab, "without a key")
        first = tab.get_by_test_id("card")
        await expect(first.get_by_test_id("status")).to_have_text("error", timeout=10_000)
        await expect(first.get_by_test_id("error")).to_contain_text("401")
        await expect(key).to_be_visible()

        await key.fill("page-key-6c1e9b0d")
        await send(tab, "@mock ttft_ms=0 itl_ms=100\nwith the key it streams")
        card = tab.get_by_test_id("card").first  # the newest card comes first
        await expect(card.get_by_test_id("status")).to_have_text("streaming", timeout=10_000)
        await expect(card.get_by_test_id("status")).to_have_text("done", timeout=10_000)
        await expect(card.get_by_test_id("answer")).to_have_text("with the key it streams")
        # The public /stats names no task: its table of slowest requests has no task column.
        slowest = tab.locator("#stats table caption", has_text="slowest")
        await expect(slowest).to_have_count(1, timeout=10_000)
        await expect(tab.locator("#stats th", has_text="task")).to_have_count(0)


async def test_a_burst_shows_its_batches_and_the_latency_histogram(
    page: Page, stack: Stack
) -> None:
    await stack.worker(max_batch=8, window_ms=300)
    await page.get_by_test_id("context").fill("@mock ttft_ms=300 itl_ms=20\nburst")
    await page.get_by_test_id("burst").click()
    cards = page.get_by_test_id("card")
    await expect(cards).to_have_count(8)
    for i in range(8):
        await expect(cards.nth(i).get_by_test_id("status")).to_have_text("done", timeout=20_000)
    ids = set(await page.get_by_test_id("task-id").all_text_contents())
    sizes = [int(s) for s in await page.get_by_test_id("batch-size").all_text_contents()]
    assert len(ids) == 8 and max(sizes) > 1  # some of them shared a batch

    timeline = page.get_by_test_id("timeline")
    marks = timeline.locator("rect.tl-req[data-task-id]")
    await expect(marks).to_have_count(8)
    assert {await m.get_attribute("data-task-id") for m in await marks.all()} == ids
    bars = timeline.locator("rect.tl-batch[data-batch-id]")
    bar_ids = [await b.get_attribute("data-batch-id") for b in await bars.all()]
    assert 1 <= len(bar_ids) < 8 and len(set(bar_ids)) == len(bar_ids)
    marked = {await m.get_attribute("data-batch-id") for m in await marks.all()}
    assert marked == set(bar_ids)  # every request sits in a drawn batch, every batch holds one
    await expect(timeline.locator("rect.tl-lane")).to_have_count(1)  # one worker, one lane
    for bar in await bars.all():
        assert float(await bar.get_attribute("width") or 0) > 0

    # The histogram comes from /stats, polled every 2 s: all 8 requests end up counted.
    latency = page.get_by_test_id("latency")
    await expect(latency).to_be_visible(timeout=10_000)
    totals = latency.locator("rect.lat-bar[data-series='total_ms']")
    await expect(totals.first).to_be_visible(timeout=10_000)

    async def all_counted() -> bool:
        js = "bars => bars.reduce((n, bar) => n + Number(bar.dataset.count), 0)"
        return await totals.evaluate_all(js) == 8

    await eventually(all_counted, timeout_s=10, what="the 8 requests in the histogram")
    await expect(latency.locator("rect.lat-bar[data-series='ttft_ms']").first).to_be_visible()
