"""`llm-batcher`: the command line of every process kind (api, worker, up) and its tools
(stats, dlq, check, bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from llm_batcher import logs
from llm_batcher.settings import ApiSettings, CommonSettings, OperatorSettings, WorkerSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

S = TypeVar("S", bound=CommonSettings)


def load_settings(kind: Callable[..., S], **overrides: object) -> S:
    """Build settings from the environment (and flags); exit with clear lines if invalid."""
    try:
        return kind(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            name = "LLMB_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
            print(f"llm-batcher: invalid {name}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings(
        WorkerSettings, max_batch=args.max_batch, window_ms=args.window_ms,
        health_port=args.health_port,
    )  # fmt: skip
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_run_worker(settings))
    return 0


async def _run_worker(settings: WorkerSettings) -> None:
    from llm_batcher.protocol.connection import make_redis
    from llm_batcher.worker.service import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = make_redis(settings, max_connections=8, socket_timeout_s=15)
    try:
        await Worker(settings, redis).run(stop)
    finally:
        await redis.aclose()


def _cmd_operator(args: argparse.Namespace) -> int:
    settings = load_settings(OperatorSettings, namespace=args.namespace)
    if not settings.namespace:
        print("llm-batcher: invalid LLMB_NAMESPACE: must name a namespace", file=sys.stderr)
        return 2
    try:
        from llm_batcher.operator import service
    except ModuleNotFoundError as exc:
        if exc.name != "kopf":
            raise
        print("llm-batcher: the operator needs kopf: pip install 'llm-batcher[operator]'",
              file=sys.stderr)  # fmt: skip
        return 2
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_run_operator(settings, service.run_operator))
    return 0


async def _run_operator(
    settings: OperatorSettings, run: Callable[[OperatorSettings, Redis], Awaitable[None]]
) -> None:
    from llm_batcher.protocol.connection import make_redis

    redis = make_redis(settings, max_connections=4, socket_timeout_s=15)
    try:
        await run(settings, redis)
    finally:
        await redis.aclose()


def _cmd_api(args: argparse.Namespace) -> int:
    settings = load_settings(ApiSettings, host=args.host, port=args.port)
    logs.configure(settings.log_level, settings.log_format)
    from llm_batcher.api.server import serve
    from llm_batcher.limits import raise_open_file_limit

    raise_open_file_limit()
    return serve(settings)


def _cmd_stats(args: argparse.Namespace) -> int:
    from llm_batcher.stats import format_table

    report = _stats_from_api(args.url) if args.url else _stats_from_redis()
    if report is None:
        return 1
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _stats_from_redis() -> dict[str, object] | None:
    """The full report (task ids and contexts included), read from Redis directly."""
    from llm_batcher.protocol.connection import REDIS_UNAVAILABLE, make_redis
    from llm_batcher.protocol.keys import Keys
    from llm_batcher.protocol.queue import TaskQueue
    from llm_batcher.stats import collect

    settings = load_settings(ApiSettings)

    async def read() -> dict[str, object]:
        redis = make_redis(settings, max_connections=2, socket_timeout_s=10)
        try:
            queue = TaskQueue.create(redis, Keys(settings.key_prefix), result_ttl_s=1)
            return await collect(
                queue,
                window_s=settings.stats_window_s,
                slowest=settings.stats_slowest,
                lease_ms=settings.lease_ms,
            )
        finally:
            await redis.aclose()

    try:
        return asyncio.run(read())
    except REDIS_UNAVAILABLE as exc:
        print(f"llm-batcher stats: cannot read {settings.redis_url}: {exc}", file=sys.stderr)
        return None


def _stats_from_api(base_url: str) -> dict[str, object] | None:
    """The API's /stats: the public view, or the full one when LLMB_ADMIN_KEYS holds a key."""
    import httpx

    url = base_url.rstrip("/") + "/stats"
    admin_keys = load_settings(ApiSettings).admin_key_list()
    headers = {"Authorization": f"Bearer {admin_keys[0]}"} if admin_keys else None
    try:
        response = httpx.get(url, timeout=5, headers=headers)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"llm-batcher stats: cannot read {url}: {exc}", file=sys.stderr)
        return None
    report: dict[str, object] = response.json()
    return report


def _cmd_dlq(args: argparse.Namespace) -> int:
    from llm_batcher import dlq

    settings = load_settings(ApiSettings)
    logs.configure(settings.log_level, settings.log_format)
    return dlq.run(args, settings)


def _cmd_check(args: argparse.Namespace) -> int:
    from llm_batcher.check import main as check_main

    return check_main(args)


def _cmd_up(args: argparse.Namespace) -> int:
    from llm_batcher.limits import raise_open_file_limit
    from llm_batcher.local.up import main as up_main

    raise_open_file_limit()  # inherited by the API it starts
    return up_main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from llm_batcher.bench.run import main as bench_main
    except ModuleNotFoundError as exc:
        print(
            f"llm-batcher bench: {exc}; it needs the bench extra: pip install 'llm-batcher[bench]'",
            file=sys.stderr,
        )
        return 2

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-batcher",
        description="Batch LLM requests through Redis and stream the answers as SSE. "
        "Every setting is also an LLMB_* environment variable (see the README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the HTTP API (GET/POST /generate, test page at /)")
    api.add_argument("--host", help="listen address (LLMB_HOST)")
    api.add_argument("--port", type=int, help="listen port (LLMB_PORT)")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="claim tasks and run the LLM on batches")
    worker.add_argument("--max-batch", type=int, help="most tasks in a batch (LLMB_MAX_BATCH)")
    worker.add_argument("--window-ms", type=int, help="batch window (LLMB_WINDOW_MS)")
    worker.add_argument("--health-port", type=int, help="health/metrics port (LLMB_HEALTH_PORT)")
    worker.set_defaults(func=_cmd_worker)

    operator = sub.add_parser(
        "operator",
        help="on Kubernetes: hand gone worker pods' tasks on at once, remove stale consumers, "
        "keep pod-deletion-cost in step (needs the `operator` extra: kopf)",
    )
    operator.add_argument("--namespace", help="namespace of the worker pods (LLMB_NAMESPACE)")
    operator.set_defaults(func=_cmd_operator)

    stats = sub.add_parser(
        "stats",
        help="print latency quantiles and the slowest requests, read from Redis (LLMB_REDIS_URL)",
    )
    stats.add_argument(
        "--url",
        help="read an API's /stats instead (the public view; the full one with LLMB_ADMIN_KEYS)",
    )
    stats.add_argument("--json", action="store_true", help="print the raw JSON report")
    stats.set_defaults(func=_cmd_stats)

    from llm_batcher.dlq import add_arguments as add_dlq_arguments

    dlq = sub.add_parser(
        "dlq",
        help="list, show, requeue or purge the dead letters, in Redis (LLMB_REDIS_URL)",
    )
    add_dlq_arguments(dlq)
    dlq.set_defaults(func=_cmd_dlq)

    from llm_batcher.check import add_arguments as add_check_arguments

    check = sub.add_parser(
        "check", help="stream one answer from the API and check it against the stream contract"
    )
    add_check_arguments(check)
    check.set_defaults(func=_cmd_check)

    from llm_batcher.local.up import add_arguments as add_up_arguments

    up = sub.add_parser("up", help="run the whole system on this machine (Redis, API, workers)")
    add_up_arguments(up)
    up.set_defaults(func=_cmd_up)

    from llm_batcher.bench.arguments import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="measure throughput, latency and API cost")
    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
