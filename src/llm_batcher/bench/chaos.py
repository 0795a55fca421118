"""The chaos soak: `llm-batcher bench --chaos` and the CI system test, one implementation.

A stack of its own (two API replicas, the workers, Redis with AOF on a data folder) serves a
steady stream of requests of every kind (fast, slow, crashing, hanging, writing garbage) from a
few clients, while faults are injected in turn: a worker SIGKILLed mid-batch, a client that hangs
up mid-stream, an API replica SIGKILLed while streams run on it (its clients resume on the other),
Redis frozen (SIGSTOP for 2 s) and Redis restarted. Each fault waits for progress since the last
one (a few answers completed) and for the stack to be whole again, never for a fixed time. When
the load ends and every request has ended, the global invariants are checked: nothing queued or
streaming, no batch folder and no LLM child left, Redis back to its baseline once the results
expired. The judgement is chaos_report's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from llm_batcher.bench.chaos_client import Clients, hang_up, http_client, run_request
from llm_batcher.bench.chaos_report import (
    API_KILL,
    CLIENT_DISCONNECT,
    FAULT_KINDS,
    NO_BATCH_FOLDER,
    NO_LLM_CHILD,
    NO_OPEN_STREAM,
    QUEUE_DEPTH,
    REDIS_FREEZE,
    REDIS_MEMORY,
    REDIS_RESTART,
    WORKER_KILL,
    Disconnect,
    Exchange,
    Fault,
    Judgement,
    judge,
    report_dict,
    text_report,
)
from llm_batcher.bench.chaos_stack import ChaosStack, wait_for
from llm_batcher.bench.stack import LocalStack, StackConfig

FREEZE_S = 2.0
ANSWERS_BETWEEN_FAULTS = 4  # requests completed since the last fault before the next one
PROGRESS_TIMEOUT_S = 60.0
WHOLE_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0  # for the queue, the streams and the folders to empty after the load
MEMORY_SLACK_BYTES = 1024 * 1024
"""Redis memory may end this far above its baseline: the bounded logs that outlive requests
(the /stats window, the dead-letter log, the arrivals list) and Redis's own buffers."""


@dataclass(frozen=True)
class ChaosConfig:
    """One soak: ``load_s`` of load and faults (more if a round of every fault takes longer)."""

    load_s: float
    clients: int = 4
    workers: int = 2
    max_batch: int = 4
    # A task hash lives for the result TTL from its submit: a task still running then is lost.
    # The task timeout stays below it, so that a task held up too long ends `timeout` (which
    # no fault explains: a failure) instead of `lost`.
    result_ttl_s: float = 30.0
    task_timeout_s: float = 25.0
    batch_timeout_s: float = 4.0
    request_deadline_s: float = 90.0

    def stack_config(self, batch_root: Path) -> StackConfig:
        env = (
            ("LLMB_RESULT_TTL_S", str(self.result_ttl_s)),
            ("LLMB_STATS_WINDOW_S", str(self.result_ttl_s)),
            ("LLMB_TASK_TIMEOUT_S", str(self.task_timeout_s)),
            ("LLMB_BATCH_TIMEOUT_S", str(self.batch_timeout_s)),
            ("LLMB_TMP_DIR", str(batch_root)),
            ("LLMB_PING_S", "2"),
            ("LLMB_SHUTDOWN_GRACE_S", "0"),
            ("LLMB_DRAIN_S", "5"),
        )
        return StackConfig(self.workers, self.max_batch, env=env, apis=2, persistent=True)


@dataclass
class Soak:
    config: ChaosConfig
    stack: ChaosStack
    clients: Clients
    say: Callable[[str], None]
    exchanges: list[Exchange] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    origin_s: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            for _ in range(self.config.clients):
                group.create_task(self._client(stop))
            group.create_task(self._inject_all(stop))

    async def _client(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            index = next(self.counter)
            x = await run_request(self.clients, index, self.config.request_deadline_s)
            self.exchanges.append(x)

    async def _inject_all(self, stop: asyncio.Event) -> None:
        try:
            deadline = self.origin_s + self.config.load_s
            for kind in itertools.cycle(FAULT_KINDS):
                done = {f.kind for f in self.faults}
                if time.monotonic() >= deadline and done >= set(FAULT_KINDS):
                    return
                await self._progress(len(self.exchanges) + ANSWERS_BETWEEN_FAULTS, kind)
                await self.stack.wait_whole(WHOLE_TIMEOUT_S)
                await self._inject(kind)
        finally:
            stop.set()

    async def _progress(self, answers: int, kind: str) -> None:
        what = f"{ANSWERS_BETWEEN_FAULTS} answers before {kind}"
        await wait_for(lambda: len(self.exchanges) >= answers, PROGRESS_TIMEOUT_S, what)

    async def _inject(self, kind: str) -> None:
        start = time.monotonic()
        detail = await INJECTORS[kind](self)
        if kind != CLIENT_DISCONNECT:
            await self.stack.wait_whole(WHOLE_TIMEOUT_S)
        fault = Fault(kind, start - self.origin_s, time.monotonic() - self.origin_s, detail)
        self.faults.append(fault)
        self.say(f"{kind} ({detail}): whole again after {fault.end_s - fault.start_s:.1f} s")

    async def _kill_worker(self) -> str:
        victim = None
        with contextlib.suppress(TimeoutError):  # none busy: kill an idle one
            await wait_for(lambda: self.stack.busy_worker() is not None, 15, "a busy worker")
            victim = self.stack.busy_worker()
        victim = victim or self.stack.local.workers[0]
        await self.stack.kill(victim)
        return victim.spec.name

    async def _kill_api(self) -> str:
        streaming = self.clients.streaming_on
        with contextlib.suppress(TimeoutError):  # none streaming: kill it all the same
            await wait_for(lambda: streaming(0) + streaming(1) > 0, 15, "a stream with tokens")
        api = 0 if streaming(0) >= streaming(1) else 1
        detail = f"{self.stack.local.apis[api].spec.name}, {streaming(api)} streams reading"
        await self.stack.kill(self.stack.local.apis[api])
        return detail

    async def _restart_redis(self) -> str:
        await self.stack.restart_redis()
        return "SIGTERM, AOF kept, same port"

    async def _freeze_redis(self) -> str:
        await self.stack.freeze_redis(FREEZE_S)
        return f"SIGSTOP for {FREEZE_S:.0f} s"

    async def _disconnect(self) -> str:
        """Two clients hang up: one after its `task` event, one after its first token."""
        base = 1_000_000 + 2 * len(self.disconnects)
        ends = await asyncio.gather(hang_up(self.clients, base, "task", 0),
                                    hang_up(self.clients, base + 1, "token", 1))  # fmt: skip
        for d in ends:
            if d.task_id is not None:
                d.ending = await self.stack.ending_of(d.task_id, SETTLE_TIMEOUT_S)
            d.end_s = time.monotonic()
            d.sent_s, d.end_s = d.sent_s - self.origin_s, d.end_s - self.origin_s
        self.disconnects += ends
        return ", ".join(f"after {d.after}: {d.ending}" for d in ends)


INJECTORS = {
    WORKER_KILL: Soak._kill_worker,
    API_KILL: Soak._kill_api,
    REDIS_RESTART: Soak._restart_redis,
    REDIS_FREEZE: Soak._freeze_redis,
    CLIENT_DISCONNECT: Soak._disconnect,
}


async def settle(
    stack: ChaosStack, j: Judgement, baseline: dict[str, int], ttl_s: float
) -> dict[str, object]:
    """The global invariants once the load has ended; Redis's memory figures."""
    await stack.wait_whole(WHOLE_TIMEOUT_S)

    async def drained() -> bool:
        depth = await stack.api_metrics("llm_batcher_queue_depth")
        busy = await stack.api_metrics("llm_batcher_queue_in_flight")
        return all(v == 0 for v in depth + busy)

    async def closed() -> bool:
        return all(v == 0 for v in await stack.api_metrics("llm_batcher_open_streams"))

    for name, condition in ((QUEUE_DEPTH, drained), (NO_OPEN_STREAM, closed)):
        j.tallies[name].add(await _holds(condition, SETTLE_TIMEOUT_S), f"{name}: not within "
                            f"{SETTLE_TIMEOUT_S:.0f} s")  # fmt: skip
    folders = await _holds(lambda: not stack.batch_dirs(), SETTLE_TIMEOUT_S)
    j.tallies[NO_BATCH_FOLDER].add(folders, f"left while idle: {stack.batch_dirs()}")
    mocks = stack.worker_mocks()
    j.tallies[NO_LLM_CHILD].add(all(n <= 1 for n in mocks.values()), f"while idle: {mocks}")
    expired = await _holds(lambda: _no_keys(stack), ttl_s + SETTLE_TIMEOUT_S)
    end = await stack.memory()
    grown = end["used_memory"] - baseline["used_memory"]
    ok = expired and grown <= MEMORY_SLACK_BYTES
    j.tallies[REDIS_MEMORY].add(ok, f"{await stack.task_keys()} task keys left, {grown:+d} bytes")
    return {"baseline": baseline, "end": end}


async def _no_keys(stack: ChaosStack) -> bool:
    return await stack.task_keys() == 0


async def _holds(condition: Any, timeout_s: float) -> bool:
    """Whether ``condition`` comes to hold within ``timeout_s``; a probe that fails (an API or
    Redis that does not answer) counts as not yet."""

    async def probe() -> bool:
        try:
            held = condition()
            return bool(held if isinstance(held, bool) else await held)
        except (httpx.HTTPError, RedisError, OSError):
            return False

    try:
        await wait_for(probe, timeout_s, "")
    except TimeoutError:
        return False
    return True


async def run_soak(
    config: ChaosConfig, data_dir: Path, log: TextIO, say: Callable[[str], None]
) -> dict[str, Any]:
    """Run one soak on a stack of its own in ``data_dir``; the report."""
    started = time.time()
    batch_root = data_dir / "batches"
    batch_root.mkdir(parents=True, exist_ok=True)
    local = LocalStack(data_dir, log)
    http = http_client()
    try:
        await local.start(config.stack_config(batch_root), with_workers=True)
        assert local.redis is not None
        # Notifications off, as in protocol/connection.py: the pool then sees the connections a
        # Redis restart closed, and makes them again.
        off = MaintNotificationsConfig(enabled=False)
        admin = Redis.from_url(local.redis.url, socket_timeout=2, decode_responses=True,
                               maint_notifications_config=off)  # fmt: skip
        async with admin:
            stack = ChaosStack(local, batch_root, admin, http)
            await stack.wait_whole(WHOLE_TIMEOUT_S)
            baseline = await stack.memory()
            soak = Soak(config, stack, Clients(stack.urls, http), say)
            say(f"load for {config.load_s:.0f} s with {config.clients} clients; faults in turn")
            await soak.run()
            say(f"{len(soak.exchanges)} requests ended; checking the stack settles")
            for x in soak.exchanges:  # on the faults' clock: seconds from the start
                x.sent_s -= soak.origin_s
                x.end_s = (x.end_s or x.sent_s) - soak.origin_s
            j = judge(soak.exchanges, soak.disconnects, soak.faults)
            memory = await settle(stack, j, baseline, config.result_ttl_s)
    finally:
        await local.stop()
        await http.aclose()
    gone = await _holds(lambda: not stack.mocks_alive(), SETTLE_TIMEOUT_S)
    j.tallies[NO_LLM_CHILD].add(gone, f"alive after the stack stopped: {stack.mocks_alive()}")
    j.tallies[NO_BATCH_FOLDER].add(not stack.batch_dirs(), f"after stop: {stack.batch_dirs()}")
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1), "config": asdict(config),
            "redis_memory": memory}  # fmt: skip
    return report_dict(j, soak.faults, len(soak.exchanges), meta)


def main(args: argparse.Namespace) -> int:
    """`llm-batcher bench --chaos`: the soak for ``--minutes``; prints and writes the report.
    Exits 1 if any invariant failed."""
    if args.minutes <= 0:
        raise SystemExit("llm-batcher bench: --minutes must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = ChaosConfig(load_s=args.minutes * 60, workers=args.workers, max_batch=args.max_batch)
    with (
        (out / "chaos-stack.log").open("w") as log,
        tempfile.TemporaryDirectory(prefix="llmb-chaos-") as data_dir,
    ):
        report = asyncio.run(run_soak(config, Path(data_dir), log, _say))
    (out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    text = text_report(report)
    (out / "chaos.txt").write_text(text + "\n")
    print(text)
    print(f"report: {out / 'chaos.json'}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _say(line: str) -> None:
    print(f"chaos: {line}", file=sys.stderr, flush=True)
