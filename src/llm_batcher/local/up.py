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
import socket
import sys
from pathlib import Path

from llm_batcher.listeners import listener, port_of
from llm_batcher.local.embedded_redis import EmbeddedRedis
from llm_batcher.local.supervisor import ChildSpec, Supervised

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--host", default=env("LLMB_HOST", "127.0.0.1"), help="API address")
    parser.add_argument(
        "--port", type=int, default=int(env("LLMB_PORT", "8000")), help="API port (0: any free)"
    )
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


def _specs(
    args: argparse.Namespace, api_sock: socket.socket, redis_url: str, redis_password: str | None
) -> list[ChildSpec]:
    """The API, serving on ``api_sock``, and the workers, each with a health socket bound here
    on a free port (listeners.py: no race for the port, and the same one after a restart)."""
    cli = [sys.executable, "-m", "llm_batcher.cli"]
    env = _child_env(args, redis_url, redis_password)
    port = port_of(api_sock)
    api_env = dict(
        env, LLMB_HOST=args.host, LLMB_PORT=str(port), LLMB_LISTEN_FD=str(api_sock.fileno())
    )
    if args.host in _LOOPBACK and "LLMB_TRUSTED_HOSTS" not in os.environ:
        # Only these names reach a loopback API legitimately: a page on another site that
        # rebinds its own name to 127.0.0.1 sends its own name as Host and is refused.
        api_env["LLMB_TRUSTED_HOSTS"] = "localhost,127.0.0.1,[::1]"
    probe_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ready = f"http://{probe_host}:{port}/healthz"
    specs = [ChildSpec("api", [*cli, "api"], api_env, ready, sockets=(api_sock,))]
    specs.extend(worker_spec(cli, env, i) for i in range(1, args.workers + 1))
    return specs


def worker_spec(cli: list[str], env: dict[str, str], number: int) -> ChildSpec:
    """Worker ``number`` (its id `worker-N`), its health socket bound here on a free port."""
    health = listener()
    name = f"worker-{number}"
    worker_env = dict(env, LLMB_HEALTH_FD=str(health.fileno()), LLMB_WORKER_ID=name)
    url = f"http://127.0.0.1:{port_of(health)}/healthz"
    return ChildSpec(name, [*cli, "worker"], worker_env, url, sockets=(health,))


async def _run(
    args: argparse.Namespace, api_sock: socket.socket, redis_url: str, redis_password: str | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    specs = _specs(args, api_sock, redis_url, redis_password)
    children = [Supervised(spec, _say) for spec in specs]
    runners = [asyncio.create_task(c.run()) for c in children]
    announce = asyncio.create_task(_announce(children, args.host, port_of(api_sock)))
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


async def _announce(children: list[Supervised], api_host: str, api_port: int) -> None:
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
                host = "localhost" if api_host in ("0.0.0.0", "127.0.0.1", "::") else api_host
                base = f"http://{host}:{api_port}"
                _say(f"test page: {base}/   API docs: {base}/docs")
                _say(f"try: curl -N '{base}/generate?context=Hello%20batching'")


def main(args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C or SIGTERM."""
    if args.workers < 0:
        raise SystemExit("llm-batcher up: --workers must be 0 or more")
    try:  # before anything starts: a port in use is one clear line, not an API restarting
        api_sock = listener(args.host, args.port)
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SystemExit(f"llm-batcher up: cannot listen on {where}: {why}") from None
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
        return asyncio.run(_run(args, api_sock, redis_url, redis_password))
    finally:
        api_sock.close()
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
