"""`llm-batcher bench`: run the scenarios, watch the API, write the report.

For each group of scenarios: start a fresh local stack (or use --url), warm it up, then for each
scenario run the load generator in a process of its own while sampling the API process; finally
check the targets, print the table and write report.json, report.md and the plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from llm_batcher.bench import output, plots
from llm_batcher.bench.load import Job, raise_open_file_limit
from llm_batcher.bench.probe import ApiProcess, Peaks, watch
from llm_batcher.bench.report import ApiFigures, Row, Samples, summarise
from llm_batcher.bench.scenarios import (
    KINDS,
    SATURATION,
    SATURATION_MODEL,
    Group,
    Model,
    Options,
    Scenario,
    build_plan,
    expected_duration_s,
)
from llm_batcher.bench.stack import Stack, StackConfig, local_stack, remote_stack
from llm_batcher.bench.targets import add_checks

GENERATOR_GRACE_S = 30.0  # beyond the generator's own deadline, before it is killed
HOLD_GRACE_S = 30.0  # beyond the opening time, before workers start even if streams are missing
WARMUP_MODEL = Model(ttft_ms=0, itl_ms=0, words=3)
LEAD_IN_MAX_CLIENTS = 64  # clients of a closed-loop scenario's unmeasured lead-in, at most
LEAD_IN_MIN_REQUESTS = 3  # requests of the lead-in, at least


def options(args: argparse.Namespace) -> Options:
    kinds = tuple(k.strip() for k in args.scenarios.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"llm-batcher bench: unknown scenarios {unknown}; known: {KINDS}")
    levels = tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else None
    if args.workers < 1 or args.max_batch < 1 or any(c < 1 for c in levels or ()):
        raise SystemExit("llm-batcher bench: --workers, --max-batch, --concurrency must be >= 1")
    if not 0 < args.light_load < 1:
        raise SystemExit("llm-batcher bench: --light-load must be between 0 and 1")
    env = tuple(_setting(item) for item in args.set)
    return Options(args.quick, args.workers, args.max_batch, args.window_ms, levels,
                   args.streams, args.open_rate, kinds, args.requests, env,
                   args.light_load)  # fmt: skip


def _setting(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.startswith("LLMB_"):
        raise SystemExit(f"llm-batcher bench: --set {item!r} is not LLMB_NAME=VALUE")
    return name, value


def main(args: argparse.Namespace) -> int:
    if args.chaos:
        from llm_batcher.bench import chaos

        return chaos.main(args)
    opts = options(args)
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    raise_open_file_limit()  # inherited by the API of a local stack and by the generator
    return asyncio.run(Bench(opts, args.url, out).run())


@dataclass
class Bench:
    opts: Options
    url: str | None
    out: Path
    rows: list[Row] = field(default_factory=list)
    samples: list[Samples] = field(default_factory=list)
    configs: list[StackConfig] = field(default_factory=list)

    async def run(self) -> int:
        started = time.time()
        plan = build_plan(self.opts)
        with (self.out / "stack.log").open("w") as log:
            for group in plan:
                await self._run_group(group, log)
        add_checks(self.rows, self.configs)
        meta = self._meta(started)
        print(output.text_table(self.rows))
        output.write_json(self.out / "report.json", meta, self.rows)
        plots.write_all(self.out, self.rows, self.samples, self._ideal(plan))
        output.write_markdown(self.out / "report.md", meta, self.rows)
        print(f"report: {self.out / 'report.md'} ({time.time() - started:.0f} s)")
        return 0

    async def _run_group(self, group: Group, log: TextIO) -> None:
        say(f"{group.name}: {group.config.workers} workers, batches of {group.config.max_batch}")
        async with self._stack(group, log) as stack:
            if not group.hold:
                await warm_up(stack, self.out)
            for index, scenario in enumerate(group.scenarios):
                hold = group.hold and index == 0
                if scenario.kind == SATURATION:
                    await lead_in(stack, scenario, self.out)
                row, sample = await run_scenario(stack, scenario, self.out, hold)
                self.rows.append(row)
                self.samples.append(sample)
                self.configs.append(group.config)

    @contextlib.asynccontextmanager
    async def _stack(self, group: Group, log: TextIO) -> AsyncIterator[Stack]:
        if self.url:
            yield remote_stack(self.url, group.config)
            return
        with tempfile.TemporaryDirectory(prefix="llmb-bench-") as data_dir:
            async with local_stack(group.config, Path(data_dir), log, not group.hold) as stack:
                yield stack

    def _ideal(self, plan: list[Group]) -> plots.IdealCurve | None:
        for group in plan:
            if group.name == SATURATION:
                slots = group.config.workers * group.config.max_batch
                batch_ms = SATURATION_MODEL.batch_ms
                return lambda c: min(c, slots) * 1000 / batch_ms
        return None

    def _meta(self, started: float) -> dict[str, object]:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        return {
            "commit": git_commit(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": f"{os.cpu_count()} CPUs, load average {load} at the end, "
            f"Python {platform.python_version()}",
            "url": self.url,
            "settings": asdict(self.opts),
        }


def git_commit() -> str:
    """The commit of the code being measured (the package's checkout), or "unknown"."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() or "unknown"


def say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def make_job(stack: Stack, scenario: Scenario, name: str, model: Model) -> Job:
    deadline = expected_duration_s(scenario, stack.config)
    return Job(name, stack.host, stack.port, scenario.mode, scenario.concurrency,
               scenario.requests, model.ttft_ms, model.itl_ms, model.words, scenario.open_rate,
               scenario.think_ms, request_timeout_s=deadline, deadline_s=deadline)  # fmt: skip


async def warm_up(stack: Stack, out: Path) -> None:
    """A few unmeasured batches: the first ones pay for imports and script loading."""
    slots = stack.config.workers * stack.config.max_batch
    scenario = Scenario("warm-up", "warm-up", "closed", slots, 2 * slots, WARMUP_MODEL)
    await generate(make_job(stack, scenario, "warm-up", WARMUP_MODEL), out, Follower(scenario))


async def lead_in(stack: Stack, scenario: Scenario, out: Path) -> None:
    """Unmeasured requests at the scenario's own load before it is measured, so that it
    measures the steady state and not the change from the previous scenario's load (the
    adaptive window judges from recent arrivals, worker/window.py)."""
    clients = min(scenario.concurrency, LEAD_IN_MAX_CLIENTS)
    requests = max(LEAD_IN_MIN_REQUESTS, clients)
    name = f"{scenario.name} lead-in"
    run = Scenario(name, "lead-in", "closed", clients, requests, scenario.model)
    await generate(make_job(stack, run, name, scenario.model), out, Follower(run))


async def run_scenario(
    stack: Stack, scenario: Scenario, out: Path, hold: bool
) -> tuple[Row, Samples]:
    """Run one scenario while watching the API; its row and samples."""
    api = ApiProcess(stack.api_pid, stack.port)
    peaks, stop = Peaks(), asyncio.Event()
    watcher = asyncio.create_task(watch(api, stack.url, peaks, stop))
    cpu_before = api.cpu_s()
    job = make_job(stack, scenario, scenario.name, scenario.model)
    follower = Follower(scenario, stack if hold else None)
    try:
        result = await generate(job, out, follower)
    finally:
        stop.set()
        await watcher
    cpu_after = api.cpu_s()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    figures = ApiFigures(cpu, peaks.rss_bytes, peaks.redis_connections, peaks.healthz_max_s,
                         peaks.healthz_failures)  # fmt: skip
    records = result["outcomes"]
    assert isinstance(records, list)
    return summarise(scenario, stack.config, records, figures)


async def generate(job: Job, out: Path, follower: Follower) -> dict[str, object]:
    """Run the load generator on ``job``; its result."""
    slug = job.name.replace(" ", "-")
    job_path, result_path = out / "raw" / f"{slug}.job.json", out / "raw" / f"{slug}.json"
    job.save(job_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_batcher.bench.load", str(job_path), str(result_path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(job.deadline_s + GENERATOR_GRACE_S):
            await follower.follow(proc)
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        raise RuntimeError(f"the load generator of {job.name!r} exited with status {code}")
    result: dict[str, object] = json.loads(result_path.read_text())
    return result


@dataclass
class Follower:
    """Shows the generator's progress; with a stack to hold, starts its workers once every
    stream holds its task (or has ended)."""

    scenario: Scenario
    hold: Stack | None = None
    started_s: float = field(default_factory=time.monotonic)
    _shown_s: float = 0.0
    _ended: int = 0

    async def follow(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:  # ends when the generator exits
            counts = json.loads(line)
            self.show(counts)
            if self.hold is not None and self._all_held(counts):
                say(f"{self.scenario.name}: {counts['tasked']} streams held; starting workers")
                stack, self.hold = self.hold, None
                await stack.start_workers()
        if sys.stderr.isatty():
            sys.stderr.write("\n")

    def _all_held(self, counts: dict[str, int]) -> bool:
        n = self.scenario.requests
        opening_s = n / self.scenario.open_rate
        late = time.monotonic() - self.started_s > opening_s + HOLD_GRACE_S
        return counts["sent"] == n and (counts["holding"] + counts["ended"] >= n or late)

    def show(self, counts: dict[str, int]) -> None:
        now = time.monotonic()
        elapsed = now - self.started_s
        text = (f"{self.scenario.name}: {counts['ended']}/{self.scenario.requests} done, "
                f"{counts['failed']} failed, {counts['open']} open, {elapsed:.0f} s")  # fmt: skip
        if sys.stderr.isatty():
            sys.stderr.write(f"\rbench: {text}   ")
            sys.stderr.flush()
        elif now - self._shown_s >= 5 or (counts["ended"] == self.scenario.requests > self._ended):
            self._shown_s = now
            say(text)
        self._ended = counts["ended"]
