"""`llm-batcher up`: the whole system on one machine.

Starts a Redis-compatible server (an embedded Valkey with its data in --data-dir, unless a Redis
URL is given), the API, and N workers running the mock LLM; prints where the test page is and a
line per process as it becomes ready; shows every process's log with its name in front; restarts
a child that dies; on Ctrl-C or SIGTERM stops the API (streams drain), then the workers (batches
drain), then Redis, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path

from llm_batcher.local.embedded_redis import EmbeddedRedis, free_port
from llm_batcher.local.supervisor import ChildSpec, Supervised

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--host", default=env("LLMB_HOST", "127.0.0.1"), help="API address")
    parser.add_argument("--port", type=int, default=int(env("LLMB_PORT", "8000")), help="API port")
    parser.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    parser.add_argument("--max-batch", type=int, help="most tasks per batch (LLMB_MAX_BATCH)")
    parser.add_argument("--window-ms", type=int, help="batch window in ms (LLMB_WINDOW_MS)")
    parser.add_argument("--mock-ttft-ms", help="mock time to first token, MIN-MAX ms")
    parser.add_argument("--mock-itl-ms", help="mock delay between tokens, MIN-MAX ms")
    parser.add_argument(
        "--redis-url",
        default=env("LLMB_REDIS_URL"),
        help="use this Redis (LLMB_REDIS_URL) instead of starting an embedded one",
    )
    parser.add_argument(
        "--data-dir", default=".llmb", help="folder of the embedded server's data (default .llmb)"
    )


def _say(line: str) -> None:
    sys.stdout.write(f"{'up':<10} | {line}\n")
    sys.stdout.flush()


def _child_env(
    args: argparse.Namespace, redis_url: str, redis_password: str | None
) -> dict[str, str]:
    env = dict(os.environ, LLMB_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    if redis_password is not None:  # the embedded server, which no Sentinel watches
        env["LLMB_REDIS_PASSWORD"] = redis_password
        env["LLMB_REDIS_SENTINELS"] = ""
    # A local stack: the test page's samples steer the mock with `@mock` lines.
    env.setdefault("LLMB_MOCK_DIRECTIVES", "true")
    flags = {
        "LLMB_MAX_BATCH": args.max_batch,
        "LLMB_WINDOW_MS": args.window_ms,
        "LLMB_MOCK_TTFT_MS": args.mock_ttft_ms,
        "LLMB_MOCK_ITL_MS": args.mock_itl_ms,
    }
    env.update({k: str(v) for k, v in flags.items() if v is not None})
    return env


def _specs(args: argparse.Namespace, redis_url: str, redis_password: str | None) -> list[ChildSpec]:
    cli = [sys.executable, "-m", "llm_batcher.cli"]
    env = _child_env(args, redis_url, redis_password)
    api_env = dict(env, LLMB_HOST=args.host, LLMB_PORT=str(args.port))
    if args.host in _LOOPBACK and "LLMB_TRUSTED_HOSTS" not in os.environ:
        # Only these names reach a loopback API legitimately: a page on another site that
        # rebinds its own name to 127.0.0.1 sends its own name as Host and is refused.
        api_env["LLMB_TRUSTED_HOSTS"] = "localhost,127.0.0.1,[::1]"
    probe_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    specs = [ChildSpec("api", [*cli, "api"], api_env, f"http://{probe_host}:{args.port}/healthz")]
    for i in range(1, args.workers + 1):
        port = free_port()
        worker_env = dict(env, LLMB_HEALTH_PORT=str(port), LLMB_WORKER_ID=f"worker-{i}")
        url = f"http://127.0.0.1:{port}/healthz"
        specs.append(ChildSpec(f"worker-{i}", [*cli, "worker"], worker_env, url))
    return specs


async def _run(args: argparse.Namespace, redis_url: str, redis_password: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children = [Supervised(spec, _say) for spec in _specs(args, redis_url, redis_password)]
    runners = [asyncio.create_task(c.run()) for c in children]
    announce = asyncio.create_task(_announce(children, args))
    await stop.wait()
    _say("stopping: API first (streams drain), then workers (batches drain)")
    announce.cancel()
    api, workers = children[0], children[1:]
    await api.stop()
    await asyncio.gather(*(w.stop() for w in workers))
    for runner in runners:
        await runner
    _say("all processes stopped")
    return 0


async def _announce(children: list[Supervised], args: argparse.Namespace) -> None:
    pending = {c.spec.name: c for c in children}
    while pending:
        waits = {asyncio.create_task(c.ready.wait()): name for name, c in pending.items()}
        done, rest = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in rest:
            task.cancel()
        for task in done:
            name = waits[task]
            _say(f"{name} ready")
            pending.pop(name)
            if name == "api":
                host = "localhost" if args.host in ("0.0.0.0", "127.0.0.1", "::") else args.host
                base = f"http://{host}:{args.port}"
                _say(f"test page: {base}/   API docs: {base}/docs")
                _say(f"try: curl -N '{base}/generate?context=Hello%20batching'")


def main(args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C or SIGTERM."""
    if args.workers < 0:
        raise SystemExit("llm-batcher up: --workers must be 0 or more")
    server = None
    redis_url, redis_password = args.redis_url, None
    if not redis_url:
        # A fresh password per run, given to the API and workers as LLMB_REDIS_PASSWORD and
        # never printed: another local user or a browser page cannot talk to this server.
        redis_password = secrets.token_urlsafe(24)
        server = EmbeddedRedis(Path(args.data_dir).resolve() / "redis", password=redis_password)
        server.start()
        redis_url = server.url
        _say(
            f"embedded Redis-compatible server (Valkey) at {redis_url}, data in "
            f"{server.data_dir}; its password for this run is in {server.config_path}"
        )
    else:
        _say(f"using Redis at {_without_password(redis_url)}")
    try:
        return asyncio.run(_run(args, redis_url, redis_password))
    finally:
        if server is not None:
            server.stop()
            _say("embedded Redis stopped")


def _without_password(url: str) -> str:
    """``url`` with any password in it masked, for printing."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
