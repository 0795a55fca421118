"""`llm-batcher check URL`: stream one /generate answer and check it against the stream contract.

What the chart's `helm test` hook runs in the API image. One line out, `OK: ...` or
`FAIL: ...`; exit status 0 or 1 (1 too when the API cannot be reached). With API keys on, it
sends the first key of LLMB_API_KEYS (or LLMB_API_KEYS_FILE), the variables the API reads.
With --metrics-url it also checks that the API's Prometheus endpoint exports the metrics the
autoscaler needs (llm_batcher_queue_depth by default).
"""

from __future__ import annotations

import argparse
import re
import time
import uuid

import httpx

from llm_batcher.contract import Event, SseParser, check
from llm_batcher.mock.cli import Context, MockConfig, plan_context
from llm_batcher.mock.directives import split_context

# What the workers' autoscaler (HPA or KEDA) reads: the API exports it.
AUTOSCALING_METRIC = "llm_batcher_queue_depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the API's base URL, e.g. http://llm-batcher-api:8000")
    parser.add_argument("--context", help="the context to send (default: a short unique text)")
    parser.add_argument(
        "--timeout-s", type=float, default=60, help="the longest the whole answer may take (60)"
    )
    parser.add_argument(
        "--expect-mock",
        action="store_true",
        help="the worker runs llm-mock: the answer must be the mock's for the context",
    )
    parser.add_argument(
        "--metrics-url",
        help="also check that this Prometheus endpoint (the API's /metrics) exports the metrics",
    )
    parser.add_argument(
        "--expect-metric",
        action="append",
        metavar="NAME",
        help=f"a metric --metrics-url must export (repeatable; default {AUTOSCALING_METRIC})",
    )


def main(args: argparse.Namespace) -> int:
    context = args.context
    if context is None:
        # No `@mock` line: the mock may be told to ignore them (LLMB_MOCK_DIRECTIVES, off in
        # the chart), and then it would echo the line too.
        context = f"llm-batcher check {uuid.uuid4().hex[:8]}: queued, batched, streamed."
    expected = mock_answer(context) if args.expect_mock else None
    url = args.url.rstrip("/") + "/generate"
    started = time.monotonic()
    from llm_batcher.cli import load_settings
    from llm_batcher.settings import ApiSettings

    keys = load_settings(ApiSettings).api_key_list()
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        events = read_stream(url, context, args.timeout_s, headers)
    except (TimeoutError, httpx.TimeoutException) as exc:  # say whether a worker could run it
        print(f"FAIL: GET {url}: {str(exc) or type(exc).__name__}{workers_note(args.url)}")
        return 1
    except (httpx.HTTPError, ValueError) as exc:
        print(f"FAIL: GET {url}: {str(exc) or type(exc).__name__}")
        return 1
    verdict = check(events, expected_text=expected)
    line = f"{verdict} [{(time.monotonic() - started) * 1000:.0f} ms]"
    if verdict.ok and args.metrics_url:
        names = args.expect_metric or [AUTOSCALING_METRIC]
        try:
            missing = missing_metrics(args.metrics_url, names, headers, args.timeout_s)
        except httpx.HTTPError as exc:
            print(f"FAIL: GET {args.metrics_url}: {str(exc) or type(exc).__name__}")
            return 1
        if missing:
            print(f"FAIL: {args.metrics_url} exports no {', '.join(missing)} (after {line})")
            return 1
        line += f"; {args.metrics_url} exports {', '.join(names)}"
    print(line)
    return 0 if verdict.ok else 1


def missing_metrics(
    url: str, names: list[str], headers: dict[str, str], timeout_s: float
) -> list[str]:
    """The names among ``names`` with no sample in the Prometheus text at ``url``.

    Raises httpx.HTTPError when the endpoint cannot be read (an error status included)."""
    response = httpx.get(url, headers=headers, timeout=min(timeout_s, 10.0))
    if response.status_code != 200:
        raise httpx.HTTPStatusError(
            f"answered {response.status_code}", request=response.request, response=response
        )
    return [name for name in names if not exports(response.text, name)]


def exports(exposition: str, name: str) -> bool:
    """Does this Prometheus text exposition hold a sample of the metric ``name``?"""
    return re.search(rf"^{re.escape(name)}(?:{{[^\n]*}})? ", exposition, re.MULTILINE) is not None


def workers_note(base_url: str) -> str:
    """What the API's /readyz says of the workers, when it says none is live: a request is
    queued without a worker (readiness does not depend on them) and waits for one."""
    try:
        answer = httpx.get(base_url.rstrip("/") + "/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return ""
    if isinstance(answer, dict) and answer.get("no_live_worker"):
        return " (the API counts no live worker: the task is queued until one starts)"
    return ""


def mock_answer(context: str) -> str:
    """The answer llm-mock gives ``context`` (at its default of no filler tokens)."""
    directive, body = split_context(context)
    config = MockConfig(ttft_ms=(0, 0), itl_ms=(0, 0), extra_tokens=0)
    return "".join(plan_context(Context(context, directive, body), config, 0, 0).tokens)


def read_stream(
    url: str, context: str, timeout_s: float, headers: dict[str, str] | None = None
) -> list[Event]:
    """The events of one GET /generate, until the server closes the stream (at most timeout_s).

    Raises httpx.HTTPError when the request fails, TimeoutError past the deadline, ValueError
    when the answer is not an event stream or an event's data is not a JSON object.
    """
    deadline = time.monotonic() + timeout_s
    parser, events = SseParser(), []
    timeout = httpx.Timeout(min(timeout_s, 10.0), read=timeout_s)
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", url, params={"context": context}, headers=headers) as response,
    ):
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            raise ValueError(f"answered {response.status_code} {ctype!r}, not text/event-stream")
        for chunk in response.iter_text():
            events += parser.feed(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer within {timeout_s:g} s")
    return events + parser.close()
